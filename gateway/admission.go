package gateway

import (
	"fmt"

	"github.com/creditgate/creditgate/ledger"
)

// admissible refuses new calls while draining or overloaded.
func (g *Gateway) admissible(overloaded bool) error {
	switch {
	case g.Draining():
		return ErrShuttingDown
	case overloaded:
		return ErrOverloaded
	case g.activeCalls() >= g.cfg.MaxCalls:
		return ErrOverloaded
	}
	return nil
}

// admit counts the call against its source trunk's max_calls; release
// (once, when the call is forgotten) gives the place back.
func (g *Gateway) admit(c *call, trunk ledger.Trunk) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if trunk.MaxCalls > 0 && g.byTrunk[trunk.ID] >= trunk.MaxCalls {
		return fmt.Errorf("%w: trunk %s has %d calls up", ErrTrunkFull, trunk.ID, trunk.MaxCalls)
	}
	g.byTrunk[trunk.ID]++
	c.trunk = trunk.ID
	return nil
}

func (c *call) release() {
	c.g.mu.Lock()
	defer c.g.mu.Unlock()
	c.g.releaseLocked(c)
}

func (g *Gateway) releaseLocked(c *call) {
	if c.trunk == "" {
		return
	}
	if g.byTrunk[c.trunk]--; g.byTrunk[c.trunk] <= 0 {
		delete(g.byTrunk, c.trunk)
	}
	c.trunk = ""
}
