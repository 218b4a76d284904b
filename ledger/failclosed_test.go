package ledger

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/creditgate/creditgate/internal/faultfs"
)

// TestFailsClosed: once a write cannot be made durable, the operation that
// needed it is not acknowledged, and the ledger refuses everything after it
// — nothing runs on money it could not record. A restart on a good disk
// finds only what was acknowledged.
func TestFailsClosed(t *testing.T) {
	dir := t.TempDir()
	fs := faultfs.New(vfs.Default)
	l := openWith(t, dir, Options{FS: fs})
	newOrg(t, l, "acme", "50.00")
	if _, err := l.OpenCall(creditCall("c1", "acme", "1.00"), t0); err != nil {
		t.Fatal(err)
	}
	_ = l.Answer("c1", t0)
	fs.FailSyncs(true)
	if _, err := l.Step("c1", 1, at(1)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("step on a failing disk: %v, want ErrUnavailable", err)
	}
	fs.FailSyncs(false)
	if err := l.Err(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Err() = %v after a failed sync", err)
	}
	if _, err := l.Fund("acme", d("60"), "after"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("funding after a failed sync: %v, want refused", err)
	}
	if _, err := l.OpenCall(creditCall("c2", "acme", "1.00"), t0); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("new call after a failed sync: %v, want refused", err)
	}
	// Pebble may refuse to close cleanly after a failed WAL sync; what
	// matters is what the next process finds.
	func() {
		defer func() { _ = recover() }()
		_ = l.Close()
	}()

	l = open(t, dir)
	defer l.Close()
	check(t, l)
	o := balance(t, l, "acme")
	// Acknowledged: funding 50, the call's first increment held (settled
	// on restart as its started increment). The failed step may or may not
	// have reached the disk; either way the books balance and nothing after
	// it was applied.
	if !o.Funded.Equal(d("50")) || o.Balance.LessThan(d("48")) || !o.Held.IsZero() {
		t.Fatalf("after restart: %+v", o)
	}
	if _, ok := l.fundKeys["acme/after"]; ok {
		t.Fatal("a refused funding was applied")
	}
}

// TestUnsyncedOpen: an open that did not wait for its fsync (what the
// gateway does before the INVITE goes out) is charged nothing if a crash
// loses it, and is on disk with the answer once Answer — which does wait —
// has returned. On a failing disk the answer is what refuses.
func TestUnsyncedOpen(t *testing.T) {
	unsynced := func(id string) Call {
		c := creditCall(id, "acme", "0.01")
		c.Unsynced = true
		return c
	}
	t.Run("lost before answer costs nothing", func(t *testing.T) {
		mem := vfs.NewCrashableMem()
		l := openWith(t, "data", Options{FS: mem})
		newOrg(t, l, "acme", "50.00")
		if _, err := l.OpenCall(unsynced("c1"), t0); err != nil {
			t.Fatal(err)
		}
		if o := balance(t, l, "acme"); o.Held.IsZero() {
			t.Fatalf("an unsynced open holds nothing in memory: %+v", o)
		}
		// The machine dies now: only what was synced survives (the open
		// may or may not have been).
		crashed := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
		_ = l.Close()
		l = openWith(t, "data", Options{FS: crashed})
		defer l.Close()
		check(t, l)
		if o := balance(t, l, "acme"); !o.Balance.Equal(d("50")) || !o.Held.IsZero() || len(l.OpenCalls()) != 0 {
			t.Fatalf("after the crash: %+v, %d calls open; want 50.00, nothing held or open", o, len(l.OpenCalls()))
		}
	})
	t.Run("answered is durable with its open", func(t *testing.T) {
		mem := vfs.NewCrashableMem()
		l := openWith(t, "data", Options{FS: mem})
		newOrg(t, l, "acme", "50.00")
		if _, err := l.OpenCall(unsynced("c1"), t0); err != nil {
			t.Fatal(err)
		}
		if err := l.AnswerDialog("c1", t0, json.RawMessage(`{"leg":"c1"}`)); err != nil {
			t.Fatal(err)
		}
		crashed := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
		_ = l.Close()
		l = openWith(t, "data", Options{FS: crashed})
		defer l.Close()
		check(t, l)
		if ds := l.Dialogs(); len(ds) != 1 || ds[0].Call != "c1" {
			t.Fatalf("dialogs after the crash: %v, want c1's", ds)
		}
		cs := cdrs(t, l, "acme")
		if len(cs) != 1 || cs[0].Answer.IsZero() || !cs[0].Charge.IsPositive() {
			t.Fatalf("CDRs after the crash: %+v, want c1 answered and charged its started increment", cs)
		}
	})
	t.Run("failing disk refuses the answer", func(t *testing.T) {
		fs := faultfs.New(vfs.Default)
		l := openWith(t, t.TempDir(), Options{FS: fs})
		newOrg(t, l, "acme", "50.00")
		fs.FailSyncs(true)
		_, openErr := l.OpenCall(unsynced("c1"), t0)
		if err := l.AnswerDialog("c1", t0, json.RawMessage(`{}`)); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("answer on a failing disk: %v (open: %v), want ErrUnavailable", err, openErr)
		}
		if _, err := l.OpenCall(unsynced("c2"), t0); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("open after a failed sync: %v, want ErrUnavailable", err)
		}
		func() {
			defer func() { _ = recover() }()
			_ = l.Close()
		}()
	})
}
