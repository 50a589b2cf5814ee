// Command etcdpeer is a go-micro HTTP-broker peer (v1, or with -dialect micro the current one)
// that finds its peers through etcd's v3 JSON gateway, written with Go's standard library only. tests/test_go_etcd_interop.py builds it and
// checks that hyperbroker (EtcdRegistry) and it see each other and exchange messages both ways.
//
// This file owns the command protocol and the broker (subscribe, publish, the /_sub endpoint);
// etcd.go owns the registry (go-micro's etcd layout over the gateway).
//
// What it does, as go-micro v1's broker/http_broker.go does:
//
//   - subscribe: registers the service "topic:<topic>", version <queue> or "ff.http.broadcast",
//     one node {id: <broker id>.<uuid>, address: host:port, metadata: {"secure": "false"}},
//     at /micro/registry/topic:<topic>/<node id> with a lease of -ttl seconds (kept alive);
//   - publish: reads every node of "topic:<topic>" from etcd and POSTs
//     http://<address>/_sub?id=<node id> with the JSON of broker.Message
//     {"Header": {..., ":topic": <topic>}, "Body": <base64>}: to every node of the broadcast
//     version, to one random node of each queue version;
//   - serves POST /_sub: 405 for another method, 500 for an unreadable body or no ":topic",
//     otherwise 200 (whether or not a subscription has that id), and records what it got.
//
// With -dialect micro it does what current go-micro's broker/http.go does instead:
//
//   - subscribe: registers the service "micro.http.broker" (for every topic), version as above,
//     one node {id: <topic>-<broker id>, address, metadata: {"secure": "false", "broker":
//     "http", "topic": <topic>}};
//   - publish: reads every node of "micro.http.broker", keeps those whose metadata has
//     broker=http and topic=<topic>, and POSTs http://<address>/?id=<node id> with
//     {"Header": {..., "Micro-Topic": <topic>}, "Body": <base64>};
//   - serves POST / (every path): as above, but the topic is read from "Micro-Topic" (and left
//     in the header, as go-micro does).
//
// Usage: etcdpeer -etcd http://127.0.0.1:2379 [-prefix /micro/registry/] [-listen 127.0.0.1:0] [-ttl 10] [-dialect v1|micro]
//
// It reads one JSON command per line on stdin and answers each with one line on stdout
// ({"seq": n, "ok": true, ...} or {"seq": n, "ok": false, "error": "..."}); events are lines
// too. It exits on EOF or {"cmd": "quit"} (revoking its lease).
//
//	{"cmd": "subscribe", "topic": T, "queue": Q}          -> {"id": node id}
//	{"cmd": "unsubscribe", "id": ID}                      -> {}
//	{"cmd": "nodes", "topic": T}                          -> {"nodes": [{"id", "address", "version", "metadata"}]}
//	{"cmd": "publish", "topic": T, "header": {}, "body": base64} -> {"posts": [{"id", "address", "status", "error"}]}
//	{"cmd": "quit"}
//
//	events: {"event": "ready", "address": "127.0.0.1:port", "broker_id": ...}
//	        {"event": "received", "id": <?id=>, "matched": n, "topic": T, "header": {}, "body": base64}
//	        {"event": "rejected", "status": 405|500, "reason": "..."}
package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	mrand "math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"
)

const (
	broadcastVersion = "ff.http.broadcast"
	microService     = "micro.http.broker"
)

// Message is go-micro's broker.Message (no json tags: the fields are "Header" and "Body").
type Message struct {
	Header map[string]string
	Body   []byte
}

type subscription struct {
	id, topic, version string
}

type peer struct {
	micro    bool // current go-micro's dialect instead of v1's
	reg      *registry
	brokerID string
	address  string
	client   *http.Client

	mu    sync.Mutex
	subs  map[string]subscription // node id -> subscription
	out   *json.Encoder
	outMu sync.Mutex
}

func (p *peer) emit(v interface{}) {
	p.outMu.Lock()
	defer p.outMu.Unlock()
	if err := p.out.Encode(v); err != nil {
		fmt.Fprintln(os.Stderr, "etcdpeer: stdout:", err)
		os.Exit(1)
	}
}

func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// ServeHTTP is go-micro's httpBroker.ServeHTTP (v1's, or the current one with -dialect micro).
func (p *peer) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != "POST" {
		p.emit(map[string]interface{}{"event": "rejected", "status": 405, "reason": "method " + req.Method})
		http.Error(w, "Method not allowed", http.StatusMethodNotAllowed)
		return
	}
	defer req.Body.Close()
	req.ParseForm()
	b, err := io.ReadAll(req.Body)
	if err != nil {
		p.emit(map[string]interface{}{"event": "rejected", "status": 500, "reason": err.Error()})
		http.Error(w, "Error reading request body: "+err.Error(), http.StatusInternalServerError)
		return
	}
	var m *Message
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		reason := "null message"
		if err != nil {
			reason = err.Error()
		}
		p.emit(map[string]interface{}{"event": "rejected", "status": 500, "reason": reason})
		http.Error(w, "Error parsing request body: "+reason, http.StatusInternalServerError)
		return
	}
	topicKey := ":topic"
	if p.micro {
		topicKey = "Micro-Topic" // and left in the header
	}
	topic := m.Header[topicKey]
	if !p.micro {
		delete(m.Header, ":topic")
	}
	if len(topic) == 0 {
		p.emit(map[string]interface{}{"event": "rejected", "status": 500, "reason": "no " + topicKey})
		http.Error(w, "Topic not found", http.StatusInternalServerError)
		return
	}
	id := req.Form.Get("id")
	matched := 0
	p.mu.Lock()
	if s, ok := p.subs[id]; ok && s.topic == topic {
		matched = 1
	}
	p.mu.Unlock()
	if m.Header == nil {
		m.Header = map[string]string{}
	}
	p.emit(map[string]interface{}{
		"event": "received", "id": id, "matched": matched, "topic": topic, "header": m.Header, "body": m.Body,
		"content_type": req.Header.Get("Content-Type"), "path": req.URL.Path,
	})
	// go-micro v1 answers 200 whatever the handler did
}

func (p *peer) subscribe(topic, queue string) (string, error) {
	version := queue
	if version == "" {
		version = broadcastVersion
	}
	id := p.brokerID + "." + newUUID()
	name := "topic:" + topic
	meta := map[string]string{"secure": "false"}
	if p.micro {
		id = topic + "-" + p.brokerID
		name = microService
		meta = map[string]string{"secure": "false", "broker": "http", "topic": topic}
	}
	svc := &Service{
		Name:      name,
		Version:   version,
		Metadata:  map[string]string{},
		Endpoints: []*Endpoint{},
		Nodes: []*Node{{
			Id:       id,
			Address:  p.address,
			Metadata: meta,
		}},
	}
	if err := p.reg.Register(svc); err != nil {
		return "", err
	}
	p.mu.Lock()
	p.subs[id] = subscription{id: id, topic: topic, version: version}
	p.mu.Unlock()
	return id, nil
}

func (p *peer) unsubscribe(id string) error {
	p.mu.Lock()
	s, ok := p.subs[id]
	delete(p.subs, id)
	p.mu.Unlock()
	if !ok {
		return fmt.Errorf("no subscription %q", id)
	}
	if p.micro {
		return p.reg.Deregister(microService, id)
	}
	return p.reg.Deregister("topic:"+s.topic, id)
}

type post struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Status  int    `json:"status"`
	Error   string `json:"error,omitempty"`
}

// services returns the services of a topic in this peer's dialect, keeping (for the current
// dialect) only the nodes tagged broker=http and topic=<topic>, as go-micro's Publish does.
func (p *peer) services(topic string) ([]*Service, error) {
	if !p.micro {
		return p.reg.GetService("topic:" + topic)
	}
	all, err := p.reg.GetService(microService)
	if err != nil {
		return nil, err
	}
	var out []*Service
	for _, s := range all {
		var nodes []*Node
		for _, n := range s.Nodes {
			if n.Metadata["broker"] == "http" && n.Metadata["topic"] == topic {
				nodes = append(nodes, n)
			}
		}
		if len(nodes) > 0 {
			c := *s
			c.Nodes = nodes
			out = append(out, &c)
		}
	}
	return out, nil
}

// publish is go-micro's httpBroker.Publish, synchronous so that the caller learns each status.
func (p *peer) publish(topic string, header map[string]string, body []byte) ([]post, error) {
	m := &Message{Header: map[string]string{}, Body: body}
	for k, v := range header {
		m.Header[k] = v
	}
	path := "/_sub"
	if p.micro {
		m.Header["Micro-Topic"] = topic
		path = "/"
	} else {
		m.Header[":topic"] = topic
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	services, err := p.services(topic)
	if err != nil {
		return nil, err
	}
	var targets []*Node
	for _, service := range services {
		if len(service.Nodes) == 0 {
			continue
		}
		switch service.Version {
		case broadcastVersion:
			targets = append(targets, service.Nodes...)
		default:
			targets = append(targets, service.Nodes[mrand.Int()%len(service.Nodes)])
		}
	}
	posts := []post{}
	for _, node := range targets {
		scheme := "http"
		if node.Metadata["secure"] == "true" {
			scheme = "https"
		}
		vals := url.Values{}
		vals.Add("id", node.Id)
		uri := fmt.Sprintf("%s://%s%s?%s", scheme, node.Address, path, vals.Encode())
		res := post{ID: node.Id, Address: node.Address}
		r, err := p.client.Post(uri, "application/json", bytes.NewReader(b))
		if err != nil {
			res.Error = err.Error()
		} else {
			res.Status = r.StatusCode
			io.Copy(io.Discard, r.Body)
			r.Body.Close()
		}
		posts = append(posts, res)
	}
	return posts, nil
}

type command struct {
	Seq    int               `json:"seq"`
	Cmd    string            `json:"cmd"`
	Topic  string            `json:"topic"`
	Queue  string            `json:"queue"`
	ID     string            `json:"id"`
	Header map[string]string `json:"header"`
	Body   []byte            `json:"body"`
}

func (p *peer) run(c command) (map[string]interface{}, error) {
	switch c.Cmd {
	case "subscribe":
		id, err := p.subscribe(c.Topic, c.Queue)
		return map[string]interface{}{"id": id}, err
	case "unsubscribe":
		return map[string]interface{}{}, p.unsubscribe(c.ID)
	case "nodes":
		services, err := p.services(c.Topic)
		if err != nil {
			return nil, err
		}
		nodes := []map[string]interface{}{}
		for _, s := range services {
			for _, n := range s.Nodes {
				nodes = append(nodes, map[string]interface{}{
					"id": n.Id, "address": n.Address, "version": s.Version, "metadata": n.Metadata,
				})
			}
		}
		return map[string]interface{}{"nodes": nodes}, nil
	case "publish":
		posts, err := p.publish(c.Topic, c.Header, c.Body)
		return map[string]interface{}{"posts": posts}, err
	}
	return nil, fmt.Errorf("unknown command %q", c.Cmd)
}

func main() {
	endpoint := flag.String("etcd", "http://127.0.0.1:2379", "etcd client URL (its v3 JSON gateway)")
	prefix := flag.String("prefix", "/micro/registry/", "go-micro's etcd registry prefix")
	listen := flag.String("listen", "127.0.0.1:0", "address of the /_sub endpoint")
	ttl := flag.Int("ttl", 10, "registration lease TTL in seconds")
	dialect := flag.String("dialect", "v1", `"v1" (topic:<topic>, /_sub, :topic) or "micro" (micro.http.broker, /, Micro-Topic)`)
	flag.Parse()
	if *dialect != "v1" && *dialect != "micro" {
		fmt.Fprintln(os.Stderr, "etcdpeer: -dialect must be v1 or micro")
		os.Exit(2)
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdpeer: listen:", err)
		os.Exit(1)
	}
	p := &peer{
		micro:    *dialect == "micro",
		reg:      newRegistry(*endpoint, *prefix, int64(*ttl)),
		brokerID: "go.micro.http.broker-" + newUUID(),
		address:  ln.Addr().String(),
		client:   &http.Client{Timeout: 10 * time.Second},
		subs:     map[string]subscription{},
		out:      json.NewEncoder(os.Stdout),
	}
	mux := http.NewServeMux()
	if p.micro {
		mux.Handle("/", p) // go-micro's DefaultPath: a ServeMux "/" pattern matches every path
	} else {
		mux.Handle("/_sub", p)
	}
	go http.Serve(ln, mux)
	p.emit(map[string]interface{}{"event": "ready", "address": p.address, "broker_id": p.brokerID})

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	for in.Scan() {
		var c command
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			p.emit(map[string]interface{}{"ok": false, "error": "bad command: " + err.Error()})
			continue
		}
		if c.Cmd == "quit" {
			break
		}
		res, err := p.run(c)
		if res == nil {
			res = map[string]interface{}{}
		}
		res["seq"] = c.Seq
		res["ok"] = err == nil
		if err != nil {
			res["error"] = err.Error()
		}
		p.emit(res)
	}
	if err := p.reg.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "etcdpeer: closing the registry:", err)
	}
}
