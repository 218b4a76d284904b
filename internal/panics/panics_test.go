package panics

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestRecoverContainsCountsAndCleansUp(t *testing.T) {
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	before := Count(Call)
	cleaned := false
	func() {
		defer Recover(log, Call, func() { cleaned = true }, "call_id", "c1")
		var m map[string]int
		m["x"] = 1 // a nil-map write: a real runtime panic
	}()
	if got := Count(Call) - before; got != 1 {
		t.Fatalf("counted %v panics, want 1", got)
	}
	if !cleaned {
		t.Fatal("the clean-up did not run")
	}
	for _, want := range []string{"panic contained", "where=call", "call_id=c1", "assignment to entry in nil map", "panics_test.go"} {
		if !strings.Contains(logged.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logged.String())
		}
	}
}

func TestRecoverContainsAPanickingCleanUp(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	before := Count(HTTP)
	func() {
		defer Recover(log, HTTP, func() { panic("clean-up failed too") })
		panic("first")
	}()
	if got := Count(HTTP) - before; got != 2 {
		t.Fatalf("counted %v panics, want 2 (the panic and the clean-up's)", got)
	}
}

func TestRecoverWithoutPanicDoesNothing(t *testing.T) {
	before := Count(SIP)
	ran := false
	func() { defer Recover(nil, SIP, func() { ran = true }) }()
	if Count(SIP) != before || ran {
		t.Fatal("Recover acted without a panic")
	}
}
