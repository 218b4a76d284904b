package gateway

import (
	"testing"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
)

// TestCarrierDigestAuth: a carrier that challenges (407) gets the carrier
// trunk's credentials and answers; with the wrong password the caller gets
// the carrier's refusal, never its challenge.
func TestCarrierDigestAuth(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	e.carrier.auth.Store(&ledger.Trunk{Username: "creditgate", Password: "carrier-secret"})
	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "carrier", Kind: rating.TrunkCarrier, URI: "sip:" + e.carrier.addr, Prefixes: []string{""},
		Username: "creditgate", Password: "carrier-secret"}))
	e.gw.ReloadTrunks()
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
		t.Fatalf("call through a challenging carrier: %d", status)
	}
	if e.carrier.challenged.Load() != 1 || e.carrier.invites.Load() != 1 {
		t.Fatalf("challenged %d, accepted %d: want one challenge, then the INVITE with credentials", e.carrier.challenged.Load(), e.carrier.invites.Load())
	}

	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "carrier", Kind: rating.TrunkCarrier, URI: "sip:" + e.carrier.addr, Prefixes: []string{""},
		Username: "creditgate", Password: "wrong"}))
	e.gw.ReloadTrunks()
	_, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018")
	t.Logf("wrong carrier password: caller got %d", status)
	if status == 200 || status == 407 || status == 401 {
		t.Fatalf("wrong carrier password: %d; want a failure, never the carrier's challenge passed to the caller", status)
	}
	if e.carrier.invites.Load() != 1 {
		t.Fatal("the carrier accepted a wrong password")
	}
}
