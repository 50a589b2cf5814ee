// A Go peer publishing one go-micro broker message with a W3C trace context, the way Go code
// using net/http and OpenTelemetry's HeaderCarrier writes it: the key canonicalised as
// "Traceparent". Standard library only.
//
// Usage: go run . URL TOPIC TRACEPARENT BODY
// POSTs {"Header": {":topic": TOPIC, "Traceparent": TRACEPARENT}, "Body": BODY} (Body as
// []byte: base64 in JSON, as go-micro's broker.Message marshals it) to URL and prints the status.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"time"
)

// Message is go-micro's broker.Message.
type Message struct {
	Header map[string]string
	Body   []byte
}

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: URL TOPIC TRACEPARENT BODY")
		os.Exit(2)
	}
	url, topic, traceparent, body := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	h := http.Header{}
	h.Set("traceparent", traceparent) // canonicalised: "Traceparent"
	header := map[string]string{":topic": topic}
	for k, v := range h {
		header[k] = v[0]
	}
	data, err := json.Marshal(Message{Header: header, Body: []byte(body)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	client := http.Client{Timeout: 10 * time.Second}
	resp, err := client.Post(url, "application/json", bytes.NewReader(data))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	fmt.Println(resp.StatusCode)
}
