package gateway

import (
	"fmt"
	"strings"
	"time"

	"github.com/creditgate/creditgate/ledger"
)

// waitByes waits until no call is left; BYE goroutines are tracked by wg,
// which Close waits on after the listeners are closed.
func (g *Gateway) waitByes() {
	for i := 0; i < 100; i++ {
		g.mu.Lock()
		n := len(g.byID)
		g.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (g *Gateway) snapshot() []*call {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]*call, 0, len(g.byID))
	for _, c := range g.byID {
		out = append(out, c)
	}
	return out
}

// Calls lists the calls up now.
func (g *Gateway) Calls() []CallInfo {
	now := g.clock.Now()
	cs := g.snapshot()
	out := make([]CallInfo, 0, len(cs))
	for _, c := range cs {
		out = append(out, c.info(now))
	}
	return out
}

// EndCall ends a call on an operator's request. An id that is not up gets
// ledger.ErrUnknownCall.
func (g *Gateway) EndCall(id string) error {
	g.mu.Lock()
	c, ok := g.byID[id]
	g.mu.Unlock()
	// Two requests to end one call may both find it: the one whose end
	// finishes it succeeds, the other finds no call, as it would a moment
	// later.
	if !ok || !c.end(ledger.ReasonAdmin, 200, byeBoth) {
		return fmt.Errorf("%w: %s", ledger.ErrUnknownCall, id)
	}
	return nil
}

// forgetIn drops the caller leg's dialog of an ended call.
func (g *Gateway) forgetIn(c *call, inID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.byIn[inID] == c {
		delete(g.byIn, inID)
	}
}

func (g *Gateway) forget(c *call, inID, outID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.releaseLocked(c)
	if _, ok := g.byID[c.id]; !ok {
		return
	}
	delete(g.byID, c.id)
	delete(g.inCalls, c.inCallID)
	if c.streamSrc != "" {
		if g.bySource[c.streamSrc]--; g.bySource[c.streamSrc] <= 0 {
			delete(g.bySource, c.streamSrc)
		}
	}
	if inID != "" {
		delete(g.byIn, inID)
	}
	if outID != "" {
		delete(g.byOut, outID)
	}
	g.m.active.Dec()
}

func (g *Gateway) activeCalls() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.byID)
}

func (g *Gateway) register(c *call, inID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	c.mu.Lock()
	c.inID = inID
	c.mu.Unlock()
	g.byID[c.id] = c
	g.byIn[inID] = c
	g.inCalls[c.inCallID] = struct{}{}
	if req := c.in.InviteRequest; req != nil && !strings.EqualFold(req.Transport(), "udp") {
		c.streamSrc = req.Source()
		g.bySource[c.streamSrc]++
	}
	g.m.active.Inc()
}

// carriesCall reports whether a call up came in over the TCP/TLS
// connection from remote (host:port).
func (g *Gateway) carriesCall(remote string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.bySource[remote] > 0
}
