package api

import (
	"context"
	"net"
	"net/http"
	"net/http/pprof"
	rtpprof "runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"github.com/valyala/fasthttp/pprofhandler"
)

// Go's profiler on the admin port, for the operator holding the admin
// token: a CPU profile or trace of the live process is how a slow gateway
// is diagnosed in the field.
//
// The endpoints that run for a while (profile, trace, and any profile with
// ?seconds=) are bounded twice: seconds is at most maxProfileSeconds, and
// the run stops as soon as its client has gone away. net/http/pprof stops
// on its request's context, but fasthttp's adaptor hands it the server's
// context, which ends only at shutdown: a client that asked for an hour of
// tracing and left kept the (process-wide, one-at-a-time) profiler busy
// for the hour.

// maxProfileSeconds bounds ?seconds= of a profile or trace.
const maxProfileSeconds = 300

// clientPoll is how often a running profile looks whether its client left.
const clientPoll = 200 * time.Millisecond

func (s *Server) pprof(ctx *fasthttp.RequestCtx) error {
	path := string(ctx.Path())
	name := strings.TrimPrefix(path, "/debug/pprof/")
	secs := ctx.QueryArgs().Peek("seconds")
	var h http.Handler
	switch {
	case name == "profile":
		h = http.HandlerFunc(pprof.Profile)
	case name == "trace":
		h = http.HandlerFunc(pprof.Trace)
	case len(secs) > 0 && rtpprof.Lookup(name) != nil:
		h = pprof.Handler(name)
	default:
		pprofhandler.PprofHandler(ctx) // instant: index, cmdline, symbol, a named profile now
		return nil
	}
	if len(secs) > 0 {
		n, err := strconv.Atoi(string(secs))
		if err != nil || n < 1 || n > maxProfileSeconds {
			return badRequest("seconds=%q: want 1 to %d", secs, maxProfileSeconds)
		}
	}
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn := ctx.Conn()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		t := time.NewTicker(clientPoll)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				if peerClosed(conn) {
					s.log.Info("profile stopped: its client went away", "path", path)
					cancel()
					return
				}
			}
		}
	}()
	fasthttpadaptor.NewFastHTTPHandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(runCtx))
	})(ctx)
	cancel()
	<-watched
	return nil
}

// peerClosed reports whether the client closed its end of c (a read would
// see end of file), without reading what it may have sent. It looks at the
// socket under TLS and the API's own wrappers; a TLS client that says
// close_notify first is not seen (its profile runs to its seconds).
func peerClosed(c net.Conn) bool {
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	var b [1]byte
	_ = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		closed = (n == 0 && err == nil) || (err != nil && err != syscall.EAGAIN && err != syscall.EINTR)
		return true
	})
	return closed
}
