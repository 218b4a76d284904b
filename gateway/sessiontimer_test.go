package gateway

import (
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// RFC 4028 negotiation: a Session-Expires below sip.min_se gets 422 with
// Min-SE; otherwise the caller's interval, never above the gateway's, is
// asked of the carrier and relayed to the caller with refresher=uas, and it
// is the interval the call's expiry runs on.
func TestSessionTimerNegotiation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		hdrs    []sip.Header
		status  int
		minSE   string // the 422's Min-SE
		session string // Session-Expires on the carrier's INVITE and in the caller's 200
		require bool   // the 200 carries Require: timer
	}{
		{name: "below min_se: 422", hdrs: []sip.Header{sip.NewHeader("Session-Expires", "60"), sip.NewHeader("Supported", "timer")},
			status: 422, minSE: "90"},
		{name: "compact form below min_se: 422", hdrs: []sip.Header{sip.NewHeader("x", "89;refresher=uac")}, status: 422, minSE: "90"},
		{name: "caller's interval honoured", hdrs: []sip.Header{sip.NewHeader("Session-Expires", "300;refresher=uac"), sip.NewHeader("Supported", "timer")},
			status: 200, session: "300", require: true},
		{name: "above the gateway's: capped", hdrs: []sip.Header{sip.NewHeader("Session-Expires", "7200")}, status: 200, session: "1800"},
		{name: "none asked: the gateway's", status: 200, session: "1800"},
		{name: "caller's Min-SE above the gateway's interval", hdrs: []sip.Header{sip.NewHeader("Min-SE", "2400"), sip.NewHeader("Supported", "timer")},
			status: 200, session: "2400", require: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, testDeck)
			e.org("acme", "US", "50.00", "12125550100", "communications_credits")
			_, status, res := e.caller.dial(e.gw.Addr(), "+12125550100", "+442079460018", tc.hdrs...)
			if status != tc.status {
				t.Fatalf("status %d, want %d", status, tc.status)
			}
			if tc.status == 422 {
				if h := res.GetHeader("Min-SE"); h == nil || h.Value() != tc.minSE {
					t.Fatalf("422 Min-SE %v, want %s", h, tc.minSE)
				}
				if n := e.carrier.invites.Load(); n != 0 {
					t.Fatalf("carrier got %d INVITEs for a refused call", n)
				}
				return
			}
			inv := e.carrier.lastInvite.Load()
			for name, want := range map[string]string{"Session-Expires": tc.session, "Min-SE": "90", "Supported": "timer"} {
				if h := inv.GetHeader(name); h == nil || h.Value() != want {
					t.Errorf("carrier's INVITE %s: %v, want %s", name, h, want)
				}
			}
			if h := res.GetHeader("Session-Expires"); h == nil || h.Value() != tc.session+";refresher=uas" {
				t.Errorf("caller's 200 Session-Expires %v, want %s;refresher=uas", h, tc.session)
			}
			if h := res.GetHeader("Require"); (h != nil && h.Value() == "timer") != tc.require {
				t.Errorf("caller's 200 Require %v, want timer: %v", h, tc.require)
			}
			eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
			c := e.gw.snapshot()[0]
			c.mu.Lock()
			got := c.live.session
			c.mu.Unlock()
			if want, _ := time.ParseDuration(tc.session + "s"); got != want {
				t.Errorf("call runs on a %s session, want %s", got, want)
			}
		})
	}
}

// An emergency call asking for a session interval below sip.min_se is not
// refused with 422: nothing may keep it from connecting. It connects, free
// and without a session timer.
func TestEmergencyIgnoresSessionTooSmall(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "communications_credits")
	_, status, res := e.caller.dial(e.gw.Addr(), "+12125550100", "911", sip.NewHeader("Session-Expires", "60"))
	if status != 200 {
		t.Fatalf("911 with Session-Expires 60: %d, want it connected", status)
	}
	if h := res.GetHeader("Session-Expires"); h != nil {
		t.Fatalf("an emergency call got a session timer: %v", h)
	}
}
