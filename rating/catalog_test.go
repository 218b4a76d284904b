package rating

import (
	"strings"
	"testing"
)

func TestDefaultCatalog(t *testing.T) {
	c := DefaultCatalog()
	want := map[string]int{PlanDomestic: 3000, PlanInternational: 600, PlanConferencing: 60}
	if len(c.Pools) != len(want) {
		t.Fatalf("%d pools, want %d", len(c.Pools), len(want))
	}
	for _, p := range c.Pools {
		if want[p.Name] != p.MinutesPerLicense {
			t.Errorf("pool %s: %d minutes a license, want %d", p.Name, p.MinutesPerLicense, want[p.Name])
		}
	}
	if len(c.ZoneA) < 10 {
		t.Errorf("zone A has %d countries", len(c.ZoneA))
	}
	us, ok := c.TollFreeRate("US")
	if !ok || us.PerMinute.String() != "0.019" || us.FirstIncrement.Seconds() != 60 {
		t.Errorf("US inbound toll-free rate %+v, %v", us, ok)
	}
	if zw, ok := c.TollFreeRate("ZW"); !ok || zw.PerMinute.String() != "0.06" {
		t.Errorf("default inbound toll-free rate %+v, %v", zw, ok)
	}
}

// TestCatalogRefuses: every refusal names the key at fault, as the
// config file spells it.
func TestCatalogRefuses(t *testing.T) {
	base := string(DefaultCatalogYAML())
	cases := []struct {
		name, yaml, want string
	}{
		{"premium in a plan", strings.Replace(base, "types: [geographic, mobile]", "types: [geographic, premium]", 1), "catalog.pools[0].types: premium is never included"},
		{"toll-free in a plan", strings.Replace(base, "types: [geographic, mobile]", "types: [toll_free]", 1), "catalog.pools[0].types: toll_free is never included"},
		{"unknown license", strings.Replace(base, "licenses: [international_calling_plan]", "licenses: [gold_plan]", 1), "catalog.pools[1].licenses: unknown license"},
		{"credits license includes nothing", strings.Replace(base, "licenses: [audio_conferencing]", "licenses: [communications_credits]", 1), "catalog.pools[2].licenses: communications_credits"},
		{"bad trunk", strings.Replace(base, "trunk: conferencing", "trunk: carrier", 1), "catalog.pools[2].trunk"},
		{"bad destinations", strings.Replace(base, "destinations: zone_a", "destinations: europe", 1), "catalog.pools[2].destinations"},
		{"duplicate pool", strings.Replace(base, "name: international", "name: domestic", 1), "appears twice"},
		{"negative minutes", strings.Replace(base, "minutes_per_license: 600", "minutes_per_license: -1", 1), "catalog.pools[1].minutes_per_license"},
		{"unknown country in zone A", strings.Replace(base, "zone_a: [AT,", "zone_a: [XX,", 1), "catalog.zone_a"},
		{"float rate", strings.Replace(base, `US: "0.0190"`, `US: "1e-2"`, 1), "catalog.inbound_toll_free.rates.US"},
		{"negative rate", strings.Replace(base, `default_rate: "0.0600"`, `default_rate: "-0.06"`, 1), "catalog.inbound_toll_free.default_rate"},
		{"zero increment", strings.Replace(base, "first_increment: 60", "first_increment: 0", 1), "catalog.inbound_toll_free.first_increment"},
		{"unknown key", base + "\nbonus_minutes: 10\n", "field bonus_minutes not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.yaml == base {
				t.Fatal("the case did not change the catalogue")
			}
			_, err := ParseCatalog([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
