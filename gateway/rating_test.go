package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

func bye(t *testing.T, sess *sipgo.DialogClientSession) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	must(t, sess.Bye(ctx))
}

func warning(res *sip.Response) string {
	if w := res.GetHeader("Warning"); w != nil {
		return w.Value()
	}
	return ""
}

// TestDomesticCallDrawsPool: a domestic call by a user on a domestic plan
// is paid from the org's minute pool — the balance does not move, the pool's
// used minutes grow by the minutes billed, the CDR says so.
func TestDomesticCallDrawsPool(t *testing.T) {
	e := newEnv(t, testDeck)
	e.org("acme", "US", "50.00", "12125550100", "domestic_calling_plan")

	// National format, as a US PBX sends it.
	sess, status, _ := e.caller.dial(e.gw.Addr(), "+12125550100", "3125550100")
	if status != 200 {
		t.Fatalf("call refused with %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	if c := e.gw.Calls()[0]; c.PaidFrom != ledger.SourcePool || c.To != "13125550100" {
		t.Fatalf("call %+v: want +13125550100 paid from the pool", c)
	}
	e.clock.Advance(time.Minute)
	e.clock.Advance(time.Minute)
	e.clock.Advance(30 * time.Second) // 2.5 minutes: three started minutes
	bye(t, sess)
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })

	cdr := e.cdrs("acme")[0]
	if cdr.Pool != ledger.PlanDomestic || cdr.PoolMinutes != 3 || !cdr.Charge.IsZero() || cdr.BilledS != 180 || cdr.Direction != "outbound" {
		t.Fatalf("CDR %+v: want 3 domestic pool minutes, no charge", cdr)
	}
	if b := e.balance("acme"); !b.Equal(d("50")) {
		t.Fatalf("balance %s: a pool call must not touch credits", b)
	}
	pools, err := e.ledger.Pools("acme", e.clock.Now())
	must(t, err)
	if p := pools[0]; p.Plan != ledger.PlanDomestic || p.Used != 3 || p.Total != 3000 || p.Held != 0 {
		t.Fatalf("domestic pool %+v: want 3 of 3000 used", p)
	}
	must(t, e.ledger.CheckInvariants())
}

// TestPlanRefusalsOnTheWire: what the catalogue and the org refuse reaches
// the PBX as SIP with its reason, and nothing reaches the carrier.
func TestPlanRefusalsOnTheWire(t *testing.T) {
	plans := ledger.DefaultPlans()
	plans[0].Minutes = 0 // the domestic pool is empty from the start
	e := newEnvPlans(t, testDeck+"1900,US,United States premium,premium,1.99,0.50,60,60\n", plans)
	e.org("acme", "US", "50.00", "12125550100", "domestic_calling_plan")
	must(t, e.ledger.PutUser(ledger.User{Org: "acme", ID: "bob", Numbers: []string{"12125550199"}, Licenses: []string{"communications_credits"}}))
	_, err := e.ledger.SetBlockPremium("acme", true)
	must(t, err)

	cases := []struct {
		name, caller, to string
		status           int
		warning          string
	}{
		{"pool empty, no credits license", "+12125550100", "+13125550100", 402, "included minutes used up"},
		{"international on a domestic plan", "+12125550100", "+442079460018", 403, "no license"},
		{"premium blocked by the org", "+12125550199", "+19005550100", 403, "premium-rate numbers are blocked"},
		{"local number without area code", "+12125550199", "5550100", 484, "not a dialable number"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.carrier.invites.Load()
			_, status, res := e.caller.dial(e.gw.Addr(), tc.caller, tc.to)
			if status != tc.status || !strings.Contains(warning(res), tc.warning) {
				t.Fatalf("got %d %q, want %d with %q", status, warning(res), tc.status, tc.warning)
			}
			if e.carrier.invites.Load() != before {
				t.Fatal("a refused call reached the carrier")
			}
		})
	}

	// Unblocking premium lets bob's credits pay for it, fee included.
	_, err = e.ledger.SetBlockPremium("acme", false)
	must(t, err)
	sess, status, _ := e.caller.dial(e.gw.Addr(), "+12125550199", "+19005550100")
	if status != 200 {
		t.Fatalf("premium call after unblocking: %d", status)
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	bye(t, sess)
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })
	if cdr := e.cdrs("acme")[0]; !cdr.Charge.Equal(d("2.49")) || cdr.Type != "premium" || cdr.Pool != "" {
		t.Fatalf("premium CDR %+v: want 0.50 fee + 1.99 first minute on credits", cdr)
	}
	must(t, e.ledger.CheckInvariants())
}

// tollFreeEnv sets up org acme owning +1 800 555 0100, delivered to a PBX
// (an answering UAS), and a carrier trunk whose calls come from e.caller.
func tollFreeEnv(t *testing.T, funding string) (*env, *carrier) {
	t.Helper()
	e := newEnv(t, testDeck)
	pbx := newCarrier(t)
	t.Cleanup(pbx.close)
	_, err := e.ledger.CreateOrg(ledger.Org{ID: "acme", Country: "US", Region: "r", BillingRegion: "r"})
	must(t, err)
	if funding != "" {
		_, err = e.ledger.Fund("acme", d(funding), "fund")
		must(t, err)
	}
	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "acme-pbx", Kind: rating.TrunkCustomer, Org: "acme", Addresses: []string{"192.0.2.10"}, URI: "sip:" + pbx.addr}))
	must(t, e.ledger.PutTrunk(ledger.Trunk{ID: "carrier-in", Kind: rating.TrunkCarrier, URI: "sip:" + e.caller.addr, Addresses: []string{e.caller.addr}}))
	must(t, e.ledger.PutTollFree(ledger.TollFree{Number: "18005550100", Org: "acme"}))
	e.gw.ReloadTrunks()
	return e, pbx
}

// TestTollFreeInboundChargedToOwner: a carrier's call to an org's toll-free
// number is delivered to the org's PBX and charged to the org per minute at
// the catalogue's inbound rate (US: 0.0190).
func TestTollFreeInboundChargedToOwner(t *testing.T) {
	e, pbx := tollFreeEnv(t, "50.00")

	sess, status, res := e.caller.dial(e.gw.Addr(), "+14155550123", "+18005550100")
	if status != 200 || string(res.Body()) != testSDP {
		t.Fatalf("inbound call: %d", status)
	}
	if pbx.invites.Load() != 1 || pbx.lastURI.Load() != "+18005550100" || e.carrier.invites.Load() != 0 {
		t.Fatalf("delivered to the PBX %d times as %v; outbound carrier got %d", pbx.invites.Load(), pbx.lastURI.Load(), e.carrier.invites.Load())
	}
	eventually(t, "call answered", func() bool { return e.answeredCalls() == 1 })
	if c := e.gw.Calls()[0]; c.Direction != "inbound" || c.PaidFrom != ledger.SourceCredits || c.RatePerMin != "0.019" {
		t.Fatalf("call %+v", c)
	}
	e.clock.Advance(time.Minute)
	e.clock.Advance(30 * time.Second)
	bye(t, sess)
	eventually(t, "PBX gets BYE", func() bool { return pbx.byes.Load() == 1 })
	eventually(t, "call settled", func() bool { return len(e.cdrs("acme")) == 1 })

	cdr := e.cdrs("acme")[0]
	if cdr.Direction != "inbound" || cdr.From != "14155550123" || cdr.To != "18005550100" || cdr.Type != "toll_free" ||
		cdr.BilledS != 120 || !cdr.Charge.Equal(d("0.038")) || cdr.Pool != "" {
		t.Fatalf("CDR %+v: want inbound, 2 minutes at 0.019 = 0.038", cdr)
	}
	if b := e.balance("acme"); !b.Equal(d("49.962")) {
		t.Fatalf("balance %s, want 50 − 0.038", b)
	}
	must(t, e.ledger.CheckInvariants())
}

// TestTollFreeInboundRefusals: no credit → 480; a number nobody owns → 404;
// neither reaches the PBX.
func TestTollFreeInboundRefusals(t *testing.T) {
	e, pbx := tollFreeEnv(t, "")
	cases := []struct {
		name, to string
		status   int
		warning  string
	}{
		{"owner has zero balance", "+18005550100", 480, "no credit"},
		{"not a number we serve", "+18005550199", 404, "not a toll-free number served here"},
		{"not a number at all", "freephone", 484, "not a dialable number"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, status, res := e.caller.dial(e.gw.Addr(), "+14155550123", tc.to)
			if status != tc.status || !strings.Contains(warning(res), tc.warning) {
				t.Fatalf("got %d %q, want %d with %q", status, warning(res), tc.status, tc.warning)
			}
		})
	}
	if pbx.invites.Load() != 0 {
		t.Fatalf("refused inbound calls reached the PBX %d times", pbx.invites.Load())
	}
	if n := len(e.cdrs("acme")); n != 0 {
		t.Fatalf("refused calls wrote %d CDRs", n)
	}
}
