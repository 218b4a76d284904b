package gateway

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
)

// TestEndLegsFromAnotherGateway: a call up on one gateway is ended by a
// second gateway (another address, another ledger) from the dialog record
// the first stored with the answer, as a surviving cluster node ends a
// dead node's call: the caller and the carrier each get a BYE in their
// dialog, from the second gateway. A record that does not parse is an
// error and sends nothing.
func TestEndLegsFromAnotherGateway(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	if _, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018"); status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	cs := e.gw.snapshot()
	if len(cs) != 1 {
		t.Fatalf("%d calls up", len(cs))
	}
	c := cs[0]
	c.mu.Lock()
	rec, id := c.dialogRecord(), c.id
	c.mu.Unlock()
	if rec == nil {
		t.Fatal("no dialog record for an answered call")
	}

	// The survivor: another gateway on another port, its own ledger.
	l2, err := ledger.Open(t.TempDir(), ledger.Options{Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	deck, err := rating.ParseDeck(strings.NewReader(testDeck))
	if err != nil {
		t.Fatal(err)
	}
	g2, err := New(testConfig(), l2, deck, e.clock, prometheus.NewRegistry(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	must(t, g2.Start())
	t.Cleanup(func() { g2.Close(); l2.Close() })
	if g2.Addr() == e.gw.Addr() {
		t.Fatalf("both gateways on %s", g2.Addr())
	}

	if err := g2.EndLegs(context.Background(), id, []byte(`{"in":`)); err == nil {
		t.Fatal("a broken record was accepted")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g2.EndLegs(ctx, id, rec); err != nil {
		t.Fatal(err)
	}
	eventually(t, "caller gets BYE", func() bool { return e.caller.byes.Load() == 1 })
	eventually(t, "carrier gets BYE", func() bool { return e.carrier.byes.Load() == 1 })
	var st dialogState
	must(t, json.Unmarshal(rec, &st))
	if _, ok := e.carrier.byeAt.Load(st.Out.CallID); !ok {
		t.Errorf("the carrier's BYE was not in the call's dialog %s", st.Out.CallID)
	}
}
