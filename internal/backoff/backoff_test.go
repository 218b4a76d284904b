package backoff

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creditgate/creditgate/internal/clock"
)

var t0 = time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)

func TestSchedule(t *testing.T) {
	clk := clock.NewFake(t0)
	s := New(clk, time.Second, 5*time.Second)
	if due, _ := s.Due("a"); !due {
		t.Fatal("an item never tried is not due")
	}
	var gaps []time.Duration
	for range 5 {
		n, next := s.Failed("a")
		gaps = append(gaps, next.Sub(clk.Now()))
		if due, at := s.Due("a"); due || !at.Equal(next) {
			t.Fatalf("after failure %d: due %v at %v", n, due, at)
		}
		clk.Advance(next.Sub(clk.Now()))
		if due, _ := s.Due("a"); !due {
			t.Fatal("not due once its time came")
		}
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	for i := range want {
		if gaps[i] != want[i] {
			t.Fatalf("gaps %v, want %v", gaps, want)
		}
	}
	s.Forget("a")
	if n, _ := s.Failed("a"); n != 1 {
		t.Fatalf("forgotten item starts at %d failures", n)
	}
}

func TestRun(t *testing.T) {
	clk := clock.NewFake(t0)
	wake := make(chan struct{}, 1)
	var runs atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, clk, wake, func(context.Context) time.Time {
			runs.Add(1)
			return clk.Now().Add(time.Minute)
		})
	}()
	wait := func(n int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for runs.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d runs, want %d", runs.Load(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	wait(1) // at once
	wake <- struct{}{}
	wait(2) // on a wake
	for clk.Pending() == 0 {
		time.Sleep(time.Millisecond)
	}
	clk.Advance(time.Minute)
	wait(3) // when due
	cancel()
	<-done
}
