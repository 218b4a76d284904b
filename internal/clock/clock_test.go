package clock

import (
	"testing"
	"time"
)

func TestFakeFiresInOrderAndChains(t *testing.T) {
	c := NewFake(time.Unix(0, 0))
	var got []time.Duration
	var tick func()
	tick = func() {
		got = append(got, c.Now().Sub(time.Unix(0, 0)))
		if len(got) < 3 {
			c.AfterFunc(time.Second, tick)
		}
	}
	c.AfterFunc(time.Second, tick)
	stopped := c.AfterFunc(1500*time.Millisecond, func() { t.Error("stopped timer fired") })
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop: want true once, then false")
	}
	c.Advance(10 * time.Second)
	want := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}
	if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("fired at %v, want %v", got, want)
	}
	if c.Pending() != 0 || c.Now() != time.Unix(10, 0) {
		t.Fatalf("pending %d now %v", c.Pending(), c.Now())
	}
}
