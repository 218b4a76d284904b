package rating

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"gopkg.in/yaml.v3"
)

// scenario is one case of testdata/decide/*.yaml (see the README there).
type scenario struct {
	Name string `yaml:"name"`
	Call struct {
		Trunk   string    `yaml:"trunk"`
		Dialled string    `yaml:"dialled"`
		At      time.Time `yaml:"at"`
	} `yaml:"call"`
	Org       OrgTerms       `yaml:"org"`
	Licenses  []License      `yaml:"licenses"`
	Pools     map[string]int `yaml:"pools"`
	Available string         `yaml:"available"`
	Want      struct {
		Result      string  `yaml:"result"`
		Reason      string  `yaml:"reason"`
		Source      *string `yaml:"source"`
		Plan        *string `yaml:"plan"`
		Number      *string `yaml:"number"`
		Prefix      *string `yaml:"prefix"`
		Rate        *string `yaml:"rate"`
		FirstCharge *string `yaml:"first_charge"`
		FirstS      *int    `yaml:"first_s"`
	} `yaml:"want"`
}

// reasons names each refusal as the scenario files do.
var reasons = map[string]error{
	"not_dialable":        ErrNotDialable,
	"no_rate":             ErrNoRate,
	"no_license":          ErrNoLicense,
	"premium_blocked":     ErrPremiumBlocked,
	"no_credit":           ErrNoCredit,
	"minutes_used_up":     ErrMinutesUsedUp,
	"toll_free_no_credit": ErrTollFreeNoCredit,
}

func reasonOf(err error) string {
	for name, e := range reasons {
		if errors.Is(err, e) {
			return name
		}
	}
	return "unexpected error: " + err.Error()
}

func TestDecisionScenarios(t *testing.T) {
	files, err := filepath.Glob("testdata/decide/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenario files: %v", err)
	}
	deck, cat := SampleDeck(), DefaultCatalog()
	total := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var cases []scenario
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&cases); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, sc := range cases {
			total++
			t.Run(filepath.Base(f)+"/"+sc.Name, func(t *testing.T) { runScenario(t, deck, &cat, sc) })
		}
	}
	if total < 40 {
		t.Fatalf("only %d scenarios", total)
	}
}

func runScenario(t *testing.T, deck *Deck, cat *Catalog, sc scenario) {
	switch sc.Want.Result {
	case "allowed", "refused":
	default:
		t.Fatalf("want.result %q: allowed or refused", sc.Want.Result)
	}
	if (sc.Want.Result == "refused") != (sc.Want.Reason != "") {
		t.Fatalf("a refused scenario names its reason, an allowed one none")
	}
	if sc.Want.Reason != "" && reasons[sc.Want.Reason] == nil {
		t.Fatalf("want.reason %q is not a refusal", sc.Want.Reason)
	}
	at := sc.Call.At
	if at.IsZero() {
		at = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	}
	avail := decimal.Zero
	if sc.Available != "" {
		avail = decimal.RequireFromString(sc.Available)
	}
	d, err := Decide(deck, cat, Call{Trunk: sc.Call.Trunk, Dialled: sc.Call.Dialled, Org: sc.Org,
		Licenses: sc.Licenses, PoolsLeft: sc.Pools, Available: avail, Now: at})
	switch {
	case sc.Want.Result == "allowed" && err != nil:
		t.Fatalf("refused (%s), want allowed", err)
	case sc.Want.Result == "refused" && err == nil:
		t.Fatalf("allowed (%+v), want refused: %s", d, sc.Want.Reason)
	case err != nil && reasonOf(err) != sc.Want.Reason:
		t.Fatalf("refused as %s (%v), want %s", reasonOf(err), err, sc.Want.Reason)
	}
	check := func(what, got string, want *string) {
		t.Helper()
		if want != nil && got != *want {
			t.Errorf("%s = %q, want %q", what, got, *want)
		}
	}
	checkMoney := func(what string, got decimal.Decimal, want *string) {
		t.Helper()
		if want != nil && !got.Equal(decimal.RequireFromString(*want)) {
			t.Errorf("%s = %s, want %s", what, got, *want)
		}
	}
	check("source", string(d.Source), sc.Want.Source)
	check("plan", d.Plan, sc.Want.Plan)
	check("number", d.Number, sc.Want.Number)
	check("prefix", d.Rate.Prefix, sc.Want.Prefix)
	checkMoney("rate", d.Rate.PerMinute, sc.Want.Rate)
	checkMoney("first charge", d.Rate.FirstCharge(), sc.Want.FirstCharge)
	if sc.Want.FirstS != nil && d.First != time.Duration(*sc.Want.FirstS)*time.Second {
		t.Errorf("first increment %s, want %ds", d.First, *sc.Want.FirstS)
	}
	if d.Emergency != (d.Source == SourceFree) && err == nil {
		t.Errorf("emergency %v but source %s", d.Emergency, d.Source)
	}
}

// FuzzDecide: whatever is dialled, from wherever, on whatever trunk, the
// decision never panics, and what it allows it can pay for.
func FuzzDecide(f *testing.F) {
	f.Add("customer", "+442079460018", "US", 3, "0.50", true, true)
	f.Add("conferencing", "020 7946 0018", "GB", 0, "0", false, true)
	f.Add("carrier", "+18005550100", "US", 0, "1", false, false)
	f.Add("customer", "911", "US", 0, "0", true, false)
	f.Add("customer", "+19005550100", "US", 10, "3.00", false, true)
	deck, cat := SampleDeck(), DefaultCatalog()
	f.Fuzz(func(t *testing.T, trunk, dialled, country string, left int, avail string, dom, credits bool) {
		a, err := decimal.NewFromString(avail)
		if err != nil {
			return
		}
		ls := []License{AudioConferencing}
		if dom {
			ls = append(ls, DomesticCallingPlan)
		}
		if credits {
			ls = append(ls, CommunicationsCredits)
		}
		pools := map[string]int{PlanDomestic: left, PlanInternational: left, PlanConferencing: left}
		d, err := Decide(deck, &cat, Call{Trunk: trunk, Dialled: dialled, Org: OrgTerms{Country: country}, Licenses: ls,
			PoolsLeft: pools, Available: a, Now: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)})
		if err != nil {
			if reasonOf(err)[0] == 'u' { // "unexpected error: …"
				t.Fatalf("refusal of no known kind: %v", err)
			}
			return
		}
		switch d.Source {
		case SourceFree:
			if !d.Emergency {
				t.Fatalf("free but not an emergency: %+v", d)
			}
		case SourcePool, SourcePoolThenCredits:
			if d.Plan == "" || (pools[d.Plan] < 1 && !d.Spill) {
				t.Fatalf("pool decision without minutes to draw: %+v", d)
			}
			if pools[d.Plan] < 1 && a.LessThan(d.Rate.FirstCharge()) {
				t.Fatalf("spilled to credits it cannot pay: %+v", d)
			}
		case SourceCredits:
			if !d.Spill || a.LessThan(d.Rate.FirstCharge()) {
				t.Fatalf("credits decision it cannot pay: available %s, %+v", a, d)
			}
		default:
			t.Fatalf("source %q", d.Source)
		}
		if !d.Emergency && !d.Inbound && (len(d.Number) > 15 || !strings.HasPrefix(d.Number, d.Rate.Prefix)) {
			t.Fatalf("number %s priced by row %s", d.Number, d.Rate.Prefix)
		}
	})
}
