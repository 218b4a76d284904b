package api

import (
	"encoding/json"
	"fmt"
	"math"
	"testing"
)

// TestTransactionsCursorAtTheTop: after= at the largest sequence number
// is an empty last page, not the first page again (after+1 wrapped to 0
// and listed the whole history); a cursor past uint64 is refused.
func TestTransactionsCursorAtTheTop(t *testing.T) {
	h := setup(t)
	h.mustDo("POST", "/v1/orgs/acme/credits", `{"amount":"51.00","idempotency_key":"k1"}`, 201)
	type page struct {
		Transactions []map[string]any
		NextAfter    *uint64 `json:"next_after"`
	}
	get := func(after uint64) page {
		t.Helper()
		var p page
		if err := json.Unmarshal(h.mustDo("GET", fmt.Sprintf("/v1/orgs/acme/transactions?after=%d", after), "", 200).body, &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	first := uint64(get(0).Transactions[0]["seq"].(float64))
	for _, after := range []uint64{0, first, math.MaxUint64 - 1, math.MaxUint64} {
		t.Run(fmt.Sprint(after), func(t *testing.T) {
			p := get(after)
			want := map[uint64]int{0: 2, first: 1}[after]
			if len(p.Transactions) != want || p.NextAfter != nil {
				t.Fatalf("after=%d: %d transactions (next_after %v), want %d and no next page", after, len(p.Transactions), p.NextAfter, want)
			}
		})
	}
	for _, after := range []string{"18446744073709551616", "-1", "99999999999999999999999"} {
		if r := h.do("GET", "/v1/orgs/acme/transactions?after="+after, ""); r.status != 422 || r.errorCode() != "invalid_request" {
			t.Fatalf("after=%s: %d %s, want 422 invalid_request", after, r.status, r.body)
		}
	}
}
