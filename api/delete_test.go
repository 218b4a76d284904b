package api

import (
	"sync"
	"testing"
)

// TestConcurrentDeletesOneWins: DELETEs of the same toll-free number sent
// at once take it away once — exactly one answers 204, the others 404 —
// and the number is gone.
func TestConcurrentDeletesOneWins(t *testing.T) {
	h := setup(t)
	for round := range 5 {
		h.mustDo("PUT", "/v1/orgs/acme/toll-free/+18005550100", "", 200)
		const n = 8
		start := make(chan struct{})
		status := make([]int, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				status[i] = h.do("DELETE", "/v1/orgs/acme/toll-free/+18005550100", "").status
			}()
		}
		close(start)
		wg.Wait()
		count := map[int]int{}
		for _, s := range status {
			count[s]++
		}
		if count[204] != 1 || count[404] != n-1 {
			t.Fatalf("round %d: answers %v, want one 204 and %d 404s", round, count, n-1)
		}
		if _, ok := h.ledger.TollFreeOwner("18005550100"); ok {
			t.Fatalf("round %d: number still assigned", round)
		}
	}
}
