// etcd.go owns the registry side of etcdpeer: go-micro's etcd registry layout (registry/etcd in
// go-micro v1) spoken through etcd's v3 JSON gateway (grpc-gateway: keys and values are base64,
// 64-bit integers are JSON strings), with the standard library only.
//
//	key   <prefix><service name>/<node id>   ("/" inside the name or id replaced by "-")
//	value the JSON of a one-node registry.Service (lower-case json tags)
//	lease one per process, TTL -ttl seconds, kept alive every TTL/3 (POST /v3/lease/keepalive);
//	      a lease found expired is granted again and every key put again
//
// GetService reads the prefix <prefix><name>/ (POST /v3/kv/range) and merges the nodes of each
// version into one Service, as go-micro's etcd GetService does.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Service, Node and Endpoint are go-micro's registry types (their json tags).
type Service struct {
	Name      string            `json:"name"`
	Version   string            `json:"version"`
	Metadata  map[string]string `json:"metadata"`
	Endpoints []*Endpoint       `json:"endpoints"`
	Nodes     []*Node           `json:"nodes"`
}

type Node struct {
	Id       string            `json:"id"`
	Address  string            `json:"address"`
	Metadata map[string]string `json:"metadata"`
}

type Endpoint struct {
	Name     string            `json:"name"`
	Metadata map[string]string `json:"metadata"`
}

type registry struct {
	endpoint string
	prefix   string
	ttl      int64
	client   *http.Client

	mu     sync.Mutex
	lease  int64
	values map[string][]byte // key -> value of every registration (put again with a new lease)
	stop   chan struct{}
}

func newRegistry(endpoint, prefix string, ttl int64) *registry {
	return &registry{
		endpoint: strings.TrimRight(endpoint, "/"),
		prefix:   prefix,
		ttl:      ttl,
		client:   &http.Client{Timeout: 5 * time.Second},
		values:   map[string][]byte{},
		stop:     make(chan struct{}),
	}
}

func (r *registry) call(path string, req interface{}, rsp interface{}) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	res, err := r.client.Post(r.endpoint+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd %s: %s: %s", path, res.Status, strings.TrimSpace(string(data)))
	}
	if rsp == nil {
		return nil
	}
	return json.Unmarshal(data, rsp)
}

func clean(part string) string { return strings.Replace(part, "/", "-", -1) }

func (r *registry) nodeKey(service, id string) string {
	return r.prefix + clean(service) + "/" + clean(id)
}

// prefixEnd is etcd's range end of every key starting with prefix.
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0}
}

func (r *registry) grant() (int64, error) {
	var rsp struct {
		ID  string `json:"ID"`
		TTL string `json:"TTL"`
	}
	if err := r.call("/v3/lease/grant", map[string]interface{}{"TTL": r.ttl}, &rsp); err != nil {
		return 0, err
	}
	return strconv.ParseInt(rsp.ID, 10, 64)
}

func (r *registry) put(key string, value []byte, lease int64) error {
	return r.call("/v3/kv/put", map[string]interface{}{"key": []byte(key), "value": value, "lease": lease}, nil)
}

// leaseLocked returns the lease, granting it (and starting its keepalive) on first use.
func (r *registry) leaseLocked() (int64, error) {
	if r.lease != 0 {
		return r.lease, nil
	}
	id, err := r.grant()
	if err != nil {
		return 0, err
	}
	r.lease = id
	go r.keepalive()
	return id, nil
}

// Register puts a one-node service under the process's lease.
func (r *registry) Register(s *Service) error {
	if len(s.Nodes) != 1 {
		return fmt.Errorf("register one node at a time")
	}
	value, err := json.Marshal(s)
	if err != nil {
		return err
	}
	key := r.nodeKey(s.Name, s.Nodes[0].Id)
	r.mu.Lock()
	defer r.mu.Unlock()
	lease, err := r.leaseLocked()
	if err != nil {
		return err
	}
	if err := r.put(key, value, lease); err != nil {
		return err
	}
	r.values[key] = value
	return nil
}

func (r *registry) Deregister(service, id string) error {
	key := r.nodeKey(service, id)
	r.mu.Lock()
	delete(r.values, key)
	r.mu.Unlock()
	return r.call("/v3/kv/deleterange", map[string]interface{}{"key": []byte(key)}, nil)
}

// GetService returns one Service per version with every node registered under the name.
func (r *registry) GetService(name string) ([]*Service, error) {
	prefix := []byte(r.prefix + clean(name) + "/")
	var rsp struct {
		Kvs []struct {
			Key   []byte `json:"key"`
			Value []byte `json:"value"`
		} `json:"kvs"`
	}
	req := map[string]interface{}{"key": prefix, "range_end": prefixEnd(prefix)}
	if err := r.call("/v3/kv/range", req, &rsp); err != nil {
		return nil, err
	}
	byVersion := map[string]*Service{}
	for _, kv := range rsp.Kvs {
		var s Service
		if err := json.Unmarshal(kv.Value, &s); err != nil || s.Name != name {
			continue
		}
		merged, ok := byVersion[s.Version]
		if !ok {
			merged = &Service{Name: s.Name, Version: s.Version, Metadata: s.Metadata, Endpoints: s.Endpoints}
			byVersion[s.Version] = merged
		}
		merged.Nodes = append(merged.Nodes, s.Nodes...)
	}
	versions := make([]string, 0, len(byVersion))
	for v := range byVersion {
		versions = append(versions, v)
	}
	sort.Strings(versions)
	out := make([]*Service, 0, len(versions))
	for _, v := range versions {
		out = append(out, byVersion[v])
	}
	return out, nil
}

// keepalive refreshes the lease every TTL/3; an expired lease is granted again and every
// registration put again.
func (r *registry) keepalive() {
	period := time.Duration(r.ttl) * time.Second / 3
	if period < 100*time.Millisecond {
		period = 100 * time.Millisecond
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		r.mu.Lock()
		lease := r.lease
		r.mu.Unlock()
		var rsp struct {
			Result struct {
				TTL string `json:"TTL"`
			} `json:"result"`
		}
		err := r.call("/v3/lease/keepalive", map[string]interface{}{"ID": lease}, &rsp)
		if err != nil {
			continue // etcd unreachable: try again next period
		}
		if ttl, _ := strconv.ParseInt(rsp.Result.TTL, 10, 64); ttl > 0 {
			continue
		}
		r.mu.Lock()
		if id, err := r.grant(); err == nil {
			r.lease = id
			for key, value := range r.values {
				r.put(key, value, id)
			}
		}
		r.mu.Unlock()
	}
}

// Close stops the keepalive and revokes the lease (deleting every key it carries).
func (r *registry) Close() error {
	close(r.stop)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lease == 0 {
		return nil
	}
	return r.call("/v3/lease/revoke", map[string]interface{}{"ID": r.lease}, nil)
}
