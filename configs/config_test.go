package configs

import (
	"reflect"
	"strings"
	"testing"
)

func TestExampleIsTheDefaults(t *testing.T) {
	c, err := Parse(Example)
	if err != nil {
		t.Fatalf("example does not parse: %v", err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Fatalf("example %+v differs from defaults %+v", c, Default())
	}
	if err := Default().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseRefuses(t *testing.T) {
	cases := []struct{ name, yaml, key string }{
		{"unknown key", "sip:\n  lisen: 1.2.3.4:5060\n", "lisen"},
		{"bad listen", "sip:\n  listen: nope\n", "sip.listen"},
		{"bad duration", "sip:\n  ring_timeout: forever\n", "line 2"},
		{"ring timeout too long", "sip:\n  ring_timeout: 1h\n", "sip.ring_timeout"},
		{"zero max calls", "sip:\n  max_calls: 0\n", "sip.max_calls"},
		{"short token", "http:\n  admin_token: abc\n", "http.admin_token"},
		{"negative minimum", "funding:\n  minimum: \"-5\"\n", "funding.minimum"},
		{"too precise minimum", "funding:\n  minimum: \"50.001\"\n", "funding.minimum"},
		{"bad level", "log:\n  level: loud\n", "log.level"},
		{"not yaml", "sip: [", "yaml"},
		{"empty data dir", "data_dir: \"\"\n", "data_dir"},
		{"negative allotment", "plans:\n  domestic_minutes: -1\n", "plans.domestic_minutes"},
		{"unknown zone A country", "plans:\n  conferencing_zone_a: [GB, XX]\n", "plans.conferencing_zone_a"},
		{"zone A not a list", "plans:\n  conferencing_zone_a: GB\n", "line 2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err = %v, want one naming %q", err, tc.key)
			}
		})
	}
}

func TestPlansOverride(t *testing.T) {
	c, err := Parse([]byte("plans:\n  international_minutes: 1200\n  conferencing_zone_a: [GB]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Plans.DomesticMinutes != 3000 || c.Plans.InternationalMinutes != 1200 || !reflect.DeepEqual(c.Plans.ConferencingZoneA, []string{"GB"}) {
		t.Fatalf("plans %+v", c.Plans)
	}
	for _, p := range c.Plans.LedgerPlans() {
		if p.Name == "international" && p.Minutes != 1200 {
			t.Fatalf("ledger plan %+v", p)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(string(Example))
	f.Add("sip:\n  listen: 127.0.0.1:5060\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse([]byte(s))
		if err == nil {
			if err := c.Validate(); err != nil {
				t.Fatalf("Parse accepted a config Validate refuses: %v", err)
			}
		}
	})
}
