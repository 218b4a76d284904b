package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/internal/panics"
	"github.com/valyala/fasthttp"
)

// withRoute adds a route for one test and takes it away after. Call it
// before the server starts: routes is read without a lock.
func withRoute(t *testing.T, r route) {
	t.Helper()
	saved := routes
	routes = append(append([]route(nil), routes...), r)
	t.Cleanup(func() { routes = saved })
}

// streamRoute answers GET path with what produce writes.
func streamRoute(t *testing.T, path string, produce func(context.Context, io.Writer) error) {
	withRoute(t, route{"GET", path, openRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, _ *request) error {
		ctx.SetContentType("text/plain")
		return s.stream(ctx, "test", produce)
	}})
}

// rows writes n numbered lines, then fails with err if it is not nil.
func rows(n int, err error) func(context.Context, io.Writer) error {
	return func(ctx context.Context, w io.Writer) error {
		for i := range n {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if _, err := fmt.Fprintf(w, "row %06d %s\n", i, strings.Repeat("x", 100)); err != nil {
				return err
			}
		}
		return err
	}
}

func (h *harness) get(path string) (*http.Response, error) {
	req, _ := http.NewRequest("GET", h.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	return http.DefaultClient.Do(req)
}

// A producer that fails half way cuts the body short: the client sees a
// truncated chunked body (unexpected EOF), never one that looks complete.
func TestStreamErrorCutsTheBodyShort(t *testing.T) {
	streamRoute(t, "/v1/test-stream", rows(5000, errors.New("disk went away")))
	h := setup(t)
	res, err := h.get("/v1/test-stream")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("status %d, read error %v after %d bytes: want 200 and an unexpected EOF", res.StatusCode, err, len(body))
	}
	h.mustDo("GET", "/healthz", "", 200)
}

// A panic in a producer is contained to its response: counted, the body
// cut short, and the server goes on serving; so is a panic in a handler,
// which is answered 500.
func TestPanicsAreContainedToTheirRequest(t *testing.T) {
	streamRoute(t, "/v1/test-stream", func(ctx context.Context, w io.Writer) error {
		_ = rows(5000, nil)(ctx, w)
		var m map[string]bool
		m["boom"] = true
		return nil
	})
	withRoute(t, route{"GET", "/v1/test-panic", openRead, journal{}, func(s *Server, ctx *fasthttp.RequestCtx, _ *request) error {
		var p *Server
		return p.ledger.Err() // nil pointer
	}})
	h := setup(t)
	streamBefore, httpBefore := panics.Count(panics.HTTPStream), panics.Count(panics.HTTP)

	res, err := h.get("/v1/test-stream")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(res.Body)
	res.Body.Close()
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read error %v: want the body cut short", err)
	}
	r := h.do("GET", "/v1/test-panic", "")
	if r.status != 500 || r.errorCode() != "internal" {
		t.Fatalf("handler panic answered %d %s, want 500 internal", r.status, r.body)
	}
	if got := panics.Count(panics.HTTPStream) - streamBefore; got != 1 {
		t.Errorf("%v stream panics counted, want 1", got)
	}
	if got := panics.Count(panics.HTTP) - httpBefore; got != 1 {
		t.Errorf("%v handler panics counted, want 1", got)
	}
	h.mustDo("GET", "/v1/orgs/acme", "", 200)
}

// Past MaxExports a new export is refused with 503 busy and Retry-After
// before it reads anything; a client that stops reading is cut after
// WriteTimeout, and its slot comes back.
func TestExportLimitsAndStalledReader(t *testing.T) {
	streamRoute(t, "/v1/test-stream", rows(200_000, nil)) // 21 MB: more than the socket buffers hold
	streamRoute(t, "/v1/test-stream-small", rows(100, nil))
	h := newLimitedHarness(t, Limits{WriteTimeout: time.Second, MaxExports: 1})
	base := strings.TrimPrefix(h.base, "http://")

	// A reader that takes the headers and then stops reading.
	stalled := rawGet(t, base, "/v1/test-stream")
	defer stalled.Close()
	if _, err := bufio.NewReader(stalled).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	r := h.do("GET", "/v1/test-stream", "")
	if r.status != 503 || r.errorCode() != "busy" || r.header.Get("Retry-After") == "" {
		t.Fatalf("second export answered %d %s (Retry-After %q), want 503 busy with Retry-After", r.status, r.body, r.header.Get("Retry-After"))
	}
	// The stalled one is cut (its write times out) and frees its slot.
	deadline := time.Now().Add(20 * time.Second)
	for len(h.srv.exports) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the stalled export still holds its slot")
		}
		time.Sleep(50 * time.Millisecond)
	}
	res, err := http.Get("http://" + base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if r := h.do("GET", "/v1/test-stream-small", ""); r.status != 200 || strings.Count(string(r.body), "\n") != 100 {
		t.Fatalf("export after the stalled one: %d, %d lines", r.status, strings.Count(string(r.body), "\n"))
	}
}

// Shutdown ends an export in flight and waits for its producer.
func TestShutdownEndsExports(t *testing.T) {
	started := make(chan struct{})
	streamRoute(t, "/v1/test-stream", func(ctx context.Context, w io.Writer) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	})
	h := setup(t)
	c := rawGet(t, strings.TrimPrefix(h.base, "http://"), "/v1/test-stream")
	defer c.Close()
	<-started
	done := make(chan error, 1)
	go func() { done <- h.srv.Shutdown() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Shutdown did not return with an export in flight")
	}
}

// rawGet sends an authorized GET on a plain TCP connection and returns it
// unread.
func rawGet(t *testing.T, addr, path string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", path, testToken); err != nil {
		t.Fatal(err)
	}
	return c
}
