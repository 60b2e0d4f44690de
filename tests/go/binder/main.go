// A service as Go services read requests: encoding/json binds the body to a
// struct (field names matched case-insensitively, the last duplicate wins),
// mime.ParseMediaType reads the Content-Type and r.ParseForm reads a form
// body. It answers every request with what it read, as JSON. It listens on
// 127.0.0.1:0 and prints its address as the first line of stdout; it stops
// when stdin closes, so the test that started it owns its lifetime.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
)

type order struct {
	Status string
	Amount int
}

func handle(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	seen := map[string]any{}
	mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	seen["media_type"] = mediaType
	seen["media_type_ok"] = err == nil
	var o order
	if err := json.Unmarshal(body, &o); err == nil {
		seen["json"] = map[string]any{"status": o.Status, "amount": o.Amount}
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	if err := r.ParseForm(); err == nil {
		seen["form_amount"] = r.PostForm.Get("amount")
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(seen)
}

func main() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(l.Addr().String())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	http.Serve(l, http.HandlerFunc(handle))
}
