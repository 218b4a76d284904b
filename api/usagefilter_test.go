package api

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
)

// TestUsageDateFiltersAcrossTheRange: a filter before 1970 is a filter like
// any other (from=1969-06-01 returns every CDR; before, the key wrapped and
// it returned none), and one outside 1678-01-01..2262-01-01 answers 400
// time_out_of_range naming the range instead of an empty 200.
func TestUsageDateFiltersAcrossTheRange(t *testing.T) {
	h := setup(t)
	usageCalls(t, h)
	for _, tc := range []struct {
		query string
		want  int
	}{
		{"from=1969-06-01", 3},
		{"from=1969-12-31T23:59:59Z", 3},
		{"from=1678-01-01", 3},
		{"from=1970-01-01T00:00:00Z", 3},
		{"from=1969-06-01&to=2262-01-01", 3},
		{"to=1969-06-01", 0},
		{"from=1678-01-01&to=1970-01-01", 0},
	} {
		t.Run(tc.query, func(t *testing.T) {
			var js struct{ CDRs []map[string]any }
			if err := json.Unmarshal(h.mustDo("GET", "/v1/orgs/acme/usage?"+tc.query, "", 200).body, &js); err != nil {
				t.Fatal(err)
			}
			if len(js.CDRs) != tc.want {
				t.Fatalf("%d CDRs, want %d", len(js.CDRs), tc.want)
			}
		})
	}
	for _, q := range []string{"from=1600-01-01", "to=1600-01-01", "from=1677-12-31T23:59:59Z",
		"from=2262-01-01T00:00:00.000000001Z", "to=9999-12-31", "from=1969-06-01&to=2300-01-01", "format=csv&from=0001-01-01"} {
		t.Run(q, func(t *testing.T) {
			r := h.do("GET", "/v1/orgs/acme/usage?"+q, "")
			var e struct {
				Error struct{ Code, Message string }
			}
			_ = json.Unmarshal(r.body, &e)
			if r.status != 400 || e.Error.Code != "time_out_of_range" || !strings.Contains(e.Error.Message, "1678-01-01 to 2262-01-01") {
				t.Fatalf("%d %s: want 400 time_out_of_range naming the range", r.status, r.body)
			}
		})
	}
	// A time zone does not move a time out of range, or into it.
	r := h.mustDo("GET", "/v1/orgs/acme/usage?from="+url.QueryEscape("1969-12-31T23:00:00-02:00"), "", 200)
	var js struct{ CDRs []map[string]any }
	if err := json.Unmarshal(r.body, &js); err != nil || len(js.CDRs) != 3 {
		t.Fatalf("from 1970-01-01T01:00Z written with an offset: %s", r.body)
	}
}
