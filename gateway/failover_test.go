package gateway

import (
	"net"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
)

// TestCarrierFailover: a carrier that answers 503, or says nothing at all,
// before answer hands the call to the next carrier for the number; a 486
// goes back to the caller as is, and no other carrier is tried.
func TestCarrierFailover(t *testing.T) {
	e := newEnvConfig(t, testDeck, func(c *Config) { c.FailoverTimeout = 200 * time.Millisecond })
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	busy := newCarrier(t)
	defer busy.close()
	silent, err := net.ListenPacket("udp", "127.0.0.1:0") // reads nothing, answers nothing
	must(t, err)
	defer silent.Close()
	// For +44: "a-busy" (503) then "b-silent", by trunk id, then the
	// default route (e.carrier, which answers).
	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "a-busy", Kind: rating.TrunkCarrier, URI: "sip:" + busy.addr, Prefixes: []string{"44"}}))
	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "b-silent", Kind: rating.TrunkCarrier, URI: "sip:" + silent.LocalAddr().String(), Prefixes: []string{"44"}}))
	e.gw.ReloadTrunks()

	busy.reject.Store(503)
	sess, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 200 {
		t.Fatalf("call with two failing carriers and a good one: %d", status)
	}
	if busy.invites.Load() != 1 || e.carrier.invites.Load() != 1 {
		t.Fatalf("INVITEs: busy %d, default %d; want 1 each", busy.invites.Load(), e.carrier.invites.Load())
	}
	eventually(t, "answered", func() bool { return e.answeredCalls() == 1 })
	bye(t, sess)
	eventually(t, "carrier gets BYE", func() bool { return e.carrier.byes.Load() == 1 })
	eventually(t, "settled", func() bool { return len(e.cdrs("acme")) == 1 })

	// 486 Busy Here is about the callee: relayed, no failover.
	busy.reject.Store(486)
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 486 {
		t.Fatalf("486 from the first carrier: caller got %d", status)
	}
	if busy.invites.Load() != 2 || e.carrier.invites.Load() != 1 {
		t.Fatalf("after a 486 another carrier was tried: busy %d, default %d", busy.invites.Load(), e.carrier.invites.Load())
	}
	// Every carrier failing: the caller gets the last carrier's failure.
	busy.reject.Store(503)
	e.carrier.reject.Store(502)
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 502 {
		t.Fatalf("all carriers failing: caller got %d, want the last one's 502", status)
	}
	eventually(t, "all settled", func() bool { return len(e.cdrs("acme")) == 3 })
	if b := e.balance("acme"); !b.Equal(d("49.99")) {
		t.Fatalf("balance %s: only the answered call (1 s at 0.01) may cost", b)
	}
	must(t, e.ledger.CheckInvariants())
}

// TestRouteLoopRefused: a carrier route that points back at the gateway
// (here with the gateway's own address also inside a customer trunk's
// range, so the returning INVITE would be taken as a new call) is cut at
// the first pass with 482, which goes back to the caller; nothing is held,
// charged or sent on to a carrier.
func TestRouteLoopRefused(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "a-loop", Kind: rating.TrunkCarrier, URI: "sip:" + e.gw.Addr(), Prefixes: []string{"44"}}))
	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "lan", Kind: rating.TrunkCustomer, Org: "acme", Addresses: []string{"127.0.0.0/8"}}))
	e.gw.ReloadTrunks()
	_, status, res := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	if status != 482 {
		t.Fatalf("call routed back at the gateway: %d %v, want 482", status, res)
	}
	if e.carrier.invites.Load() != 0 {
		t.Fatal("a looping call reached a carrier")
	}
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	if cdr := e.cdrs("acme")[0]; !cdr.Charge.IsZero() || cdr.SIPStatus != 482 {
		t.Fatalf("CDR %+v, want one free call ended 482", cdr)
	}
	if o, _ := e.ledger.Org("acme"); !o.Balance.Equal(d("50")) || !o.Held.IsZero() {
		t.Fatalf("after the loop: balance %s held %s", o.Balance, o.Held)
	}
	must(t, e.ledger.CheckInvariants())
}
