package api

import (
	"strings"
	"testing"
	"time"
)

// A CPU profile whose client went away stops at once: the profiler (one
// per process) is free again for the next request long before the
// abandoned one's seconds are up. Before, it ran them out.
func TestProfileStopsWhenItsClientLeaves(t *testing.T) {
	h := setup(t)
	addr := strings.TrimPrefix(h.base, "http://")
	c := rawGet(t, addr, "/debug/pprof/profile?seconds=120")
	time.Sleep(500 * time.Millisecond) // the profile is running
	c.Close()

	deadline := time.Now().Add(20 * time.Second)
	for {
		r := h.do("GET", "/debug/pprof/profile?seconds=1", "")
		if r.status == 200 && len(r.body) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the abandoned profile still holds the profiler: %d %s", r.status, r.body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestProfileSecondsBounded(t *testing.T) {
	h := setup(t)
	for _, q := range []string{"seconds=100000", "seconds=-1", "seconds=x"} {
		for _, p := range []string{"profile", "trace", "allocs"} {
			if r := h.do("GET", "/debug/pprof/"+p+"?"+q, ""); r.status != 422 {
				t.Errorf("%s?%s: %d %s, want 422", p, q, r.status, r.body)
			}
		}
	}
	if r := h.do("GET", "/debug/pprof/heap", ""); r.status != 200 {
		t.Errorf("heap: %d", r.status)
	}
}
