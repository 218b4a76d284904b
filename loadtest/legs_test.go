package loadtest

import (
	"reflect"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// byeThroughProxy is a BYE as a PBX behind a record-routing proxy gets it
// from a node: the proxy's Via on top of the node's, from the proxy's
// address.
func byeThroughProxy(t *testing.T, callID string) *sip.Request {
	t.Helper()
	raw := "BYE sip:pbx@127.0.0.1:5090 SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-proxy\r\n" +
		"Via: SIP/2.0/UDP 127.0.0.1:5072;branch=z9hG4bK-node\r\n" +
		"From: <sip:creditgate@127.0.0.1>;tag=a\r\nTo: <sip:pbx@127.0.0.1>;tag=b\r\n" +
		"Call-ID: " + callID + "\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
	msg, err := sip.ParseMessage([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	req := msg.(*sip.Request)
	req.SetSource("127.0.0.1:5060")
	return req
}

// TestLegsRecordTheFirstBye: a leg keeps its answer, the first BYE's time,
// source and Via (the node behind the proxy is the second), counts every
// BYE, and tells a BYE that came before its own hang-up (the gateway ended
// it) from one that crossed after it. A nil Legs records nothing and
// does not panic: a run without it behaves as before.
func TestLegsRecordTheFirstBye(t *testing.T) {
	ls := &Legs{}
	t0 := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	ls.attempted("c1", t0, "200")
	ls.answered(CallerSide, "c1", "127.0.0.1:5072", t0.Add(10*time.Millisecond))
	ls.answered(CallerSide, "c1", "127.0.0.1:9999", t0.Add(time.Second)) // a retransmitted 200: the first stays
	ls.bye(CallerSide, byeThroughProxy(t, "c1"), t0.Add(3*time.Second), true)
	ls.bye(CallerSide, byeThroughProxy(t, "c1"), t0.Add(4*time.Second), false)
	ls.hungUp(CallerSide, "c1", t0.Add(5*time.Second))

	ls.attempted("c2", t0.Add(time.Second), "200")
	ls.answered(CallerSide, "c2", "127.0.0.1:5071", t0.Add(time.Second))
	ls.hungUp(CallerSide, "c2", t0.Add(2*time.Second))
	ls.bye(CallerSide, byeThroughProxy(t, "c2"), t0.Add(2*time.Second+time.Millisecond), false)

	ls.attempted("c3", t0.Add(2*time.Second), "402")
	ls.answered(CarrierSide, "g1", "127.0.0.1:5072", t0)

	all := ls.All()
	var ids []string
	for _, l := range all {
		ids = append(ids, string(l.Side)+"/"+l.CallID)
	}
	if want := []string{"caller/c1", "caller/c2", "caller/c3", "carrier/g1"}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("order %v, want %v", ids, want)
	}
	c1 := all[0]
	if c1.Node != "127.0.0.1:5072" || !c1.Answered.Equal(t0.Add(10*time.Millisecond)) || c1.Status != "200" || !c1.Due.Equal(t0) {
		t.Errorf("c1 answer: %+v", c1)
	}
	if !c1.Bye.Equal(t0.Add(3*time.Second)) || c1.ByeFrom != "127.0.0.1:5060" || !c1.ByeMatched || c1.Byes != 2 ||
		!reflect.DeepEqual(c1.ByeVia, []string{"127.0.0.1:5060", "127.0.0.1:5072"}) {
		t.Errorf("c1 BYE: %+v", c1)
	}
	if !c1.EndedByGateway() {
		t.Error("c1: a BYE before its own hang-up is the gateway's ending")
	}
	if all[1].EndedByGateway() {
		t.Error("c2: a BYE after its own hang-up crossed it; the caller ended the call")
	}
	if all[2].Status != "402" || !all[2].Answered.IsZero() || all[2].EndedByGateway() {
		t.Errorf("c3: %+v", all[2])
	}
	if got := ls.Side(CarrierSide); len(got) != 1 || got[0].CallID != "g1" {
		t.Errorf("carrier side: %+v", got)
	}

	// A copy: changing what All returned changes nothing recorded.
	all[0].ByeVia[0] = "changed"
	if ls.All()[0].ByeVia[0] != "127.0.0.1:5060" {
		t.Error("All shares its Via slices with the recorder")
	}

	var none *Legs
	none.attempted("x", t0, "200")
	none.answered(CallerSide, "x", "", t0)
	none.bye(CallerSide, byeThroughProxy(t, "x"), t0, true)
	none.hungUp(CallerSide, "x", t0)
}
