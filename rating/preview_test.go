package rating

import (
	"errors"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// TestPreview: what GET /v1/rates answers, case by case. Emergency first
// and domestic vs international come out as Decide has them.
func TestPreview(t *testing.T) {
	d := mustDeck(t, header+
		"1,US,United States,geographic,0.01,,60,60,2026-01-01T00:00:00Z\n"+
		"1900,US,United States premium,premium,1.99,0.50,60,60,2026-01-01T00:00:00Z\n"+
		"44,GB,United Kingdom,geographic,0.018,,60,60,2026-01-01T00:00:00Z\n"+
		"447,GB,United Kingdom mobile,mobile,0.035,,60,60,2027-01-01T00:00:00Z\n"+
		"33,FR,France,geographic,0.019,,60,60,2026-01-01T00:00:00Z\n")
	gb := &OrgTerms{Country: "GB"}
	us := &OrgTerms{Country: "US", BlockPremium: true}
	cases := []struct {
		name      string
		dialled   string
		org       *OrgTerms
		at        time.Time
		wantErr   error
		number    string
		emergency bool
		prefix    string
		scope     Scope
	}{
		{name: "E.164 without an org: no scope", dialled: "+44 20 7946 0018", number: "442079460018", prefix: "44", scope: ScopeNone},
		{name: "national format without an org is not dialable", dialled: "020 7946 0018", wantErr: ErrNotDialable},
		{name: "no emergency check without an org", dialled: "112", wantErr: ErrNotDialable},
		{name: "national format read in the org's country", dialled: "020 7946 0018", org: gb, number: "442079460018", prefix: "44", scope: ScopeDomestic},
		{name: "international prefix from GB", dialled: "0033142270000", org: gb, number: "33142270000", prefix: "33", scope: ScopeInternational},
		{name: "US national number", dialled: "2125550100", org: us, number: "12125550100", prefix: "1", scope: ScopeDomestic},
		{name: "E.164 abroad with an org", dialled: "+33142270000", org: us, number: "33142270000", prefix: "33", scope: ScopeInternational},
		{name: "emergency first: 999 from GB, as dialled", dialled: "999", org: gb, number: "999", emergency: true, scope: ScopeDomestic},
		{name: "emergency cleaned of separators", dialled: " 9-9-9 ", org: gb, number: "999", emergency: true, scope: ScopeDomestic},
		{name: "emergency before the deck: 911 from US", dialled: "911", org: us, number: "911", emergency: true, scope: ScopeDomestic},
		{name: "999 with a + is not an emergency number", dialled: "+999", org: gb, wantErr: ErrNotDialable},
		{name: "premium priced even when the org blocks it", dialled: "19005550100", org: us, number: "19005550100", prefix: "1900", scope: ScopeDomestic},
		{name: "no rate names the number", dialled: "+8869123456789", org: gb, wantErr: ErrNoRate, number: "8869123456789"},
		{name: "future row not yet in effect", dialled: "07700 900123", org: gb, number: "447700900123", prefix: "44", scope: ScopeDomestic},
		{name: "future row at its time", dialled: "07700 900123", org: gb, at: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC), number: "447700900123", prefix: "447", scope: ScopeDomestic},
		{name: "letters", dialled: "abc", org: gb, wantErr: ErrNotDialable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			at := tc.at
			if at.IsZero() {
				at = t0
			}
			q, err := Preview(d, tc.dialled, tc.org, at)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err %v, want %v", err, tc.wantErr)
				}
				if q.Number != tc.number {
					t.Fatalf("number %q with the error, want %q", q.Number, tc.number)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if q.Number != tc.number || q.Emergency != tc.emergency || q.Rate.Prefix != tc.prefix || q.Scope != tc.scope {
				t.Fatalf("got number %q emergency %v prefix %q scope %q, want %q %v %q %q",
					q.Number, q.Emergency, q.Rate.Prefix, q.Scope, tc.number, tc.emergency, tc.prefix, tc.scope)
			}
		})
	}
}

// TestPreviewAgreesWithDecide: for a caller who may spend credits and has
// them, Decide allows every call Preview prices, at the same number, rate
// and scope, and refuses what Preview refuses with the same error.
func TestPreviewAgreesWithDecide(t *testing.T) {
	deck, cat := SampleDeck(), DefaultCatalog()
	for _, org := range []OrgTerms{{Country: "GB"}, {Country: "US"}, {Country: "FR"}, {Country: "DE"}} {
		for _, dialled := range []string{"999", "112", "911", "15", "020 7946 0018", "0033142270000", "+12125550100",
			"2125550100", "011 44 20 7946 0018", "+8869123456789", "+999", "abc", "01 42 27 81 86", "030 1234567"} {
			q, qerr := Preview(deck, dialled, &org, t0)
			dec, derr := Decide(deck, &cat, Call{Trunk: TrunkCustomer, Dialled: dialled, Org: org,
				Licenses: []License{CommunicationsCredits}, Available: decimal.RequireFromString("1000"), Now: t0})
			name := org.Country + " " + dialled
			if (qerr == nil) != (derr == nil) || (qerr != nil && reasonOf(qerr) != reasonOf(derr)) {
				t.Errorf("%s: Preview err %v, Decide err %v", name, qerr, derr)
				continue
			}
			if qerr != nil {
				continue
			}
			if q.Number != dec.Number || q.Emergency != dec.Emergency || q.Rate.Prefix != dec.Rate.Prefix ||
				!q.Rate.PerMinute.Equal(dec.Rate.PerMinute) ||
				(q.Scope == ScopeDomestic) != dec.Domestic {
				t.Errorf("%s: Preview %+v, Decide %+v", name, q, dec)
			}
		}
	}
}
