package ledger

import (
	"errors"
	"testing"
)

// MoveToCluster: refused while the org holds money for a call (nothing
// changes); then the balance leaves by one return entry keyed
// cluster-seed/1, once — a retry and a restart answer the same entry, and
// SeedMove tells the amount; an org without money makes no entry; an org
// whose balance came from cluster slices is not a single node's to move.
func TestMoveToCluster(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir)
	newOrg(t, l, "acme", "")
	newOrg(t, l, "zero", "")
	newOrg(t, l, "node", "")
	if _, err := l.Fund("acme", d("62.34"), "f1"); err != nil {
		t.Fatal(err)
	}
	c := creditCall("c1", "acme", "0.25")
	if _, err := l.OpenCall(c, at(0)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.MoveToCluster("acme"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("move with a call up: %v, want ErrInvalid", err)
	}
	if _, ok := l.SeedMove("acme"); ok || !balance(t, l, "acme").Balance.Equal(d("62.34")) {
		t.Fatal("a refused move changed the org")
	}
	if _, err := l.CloseCall(c.ID, CallEnd{At: at(3), Reason: ReasonCallerHangup}); err != nil {
		t.Fatal(err)
	}
	left := balance(t, l, "acme").Balance
	en, err := l.MoveToCluster("acme")
	if err != nil || en.Kind != EntryReturn || en.Key != SeedSlice+"/1" || !en.Amount.Equal(left.Neg()) || !en.Balance.IsZero() || en.Replayed {
		t.Fatalf("move: %+v %v, want a return of %s to 0", en, err, left)
	}
	again, err := l.MoveToCluster("acme")
	if err != nil || !again.Replayed || again.Seq != en.Seq {
		t.Fatalf("second move: %+v %v, want the first entry replayed", again, err)
	}
	check(t, l)
	must(t, l.Close())
	l = open(t, dir)
	if amt, ok := l.SeedMove("acme"); !ok || !amt.Equal(left) {
		t.Fatalf("after a restart SeedMove is %s %v, want %s", amt, ok, left)
	}
	if again, err := l.MoveToCluster("acme"); err != nil || !again.Replayed || again.Seq != en.Seq {
		t.Fatalf("move after a restart: %+v %v", again, err)
	}
	if got := balance(t, l, "acme"); !got.Balance.IsZero() || !got.Funded.Sub(got.Debited).IsZero() {
		t.Fatalf("acme after the move: %+v", got.Balances)
	}
	if en, err := l.MoveToCluster("zero"); err != nil || !en.Amount.IsZero() || en.Seq != 0 {
		t.Fatalf("move of an org without money: %+v %v, want no entry", en, err)
	}
	if _, ok := l.SeedMove("zero"); ok {
		t.Fatal("an org without money has a seed move")
	}
	if _, err := l.CreditSlice("node", "s1", 1, d("1.00")); err != nil {
		t.Fatal(err)
	}
	if _, err := l.MoveToCluster("node"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("move of a cluster node's slice: %v, want ErrInvalid", err)
	}
	if _, err := l.MoveToCluster("nope"); !errors.Is(err, ErrUnknownOrg) {
		t.Fatalf("move of an unknown org: %v", err)
	}
	if err := l.CheckHistory(); err != nil {
		t.Fatal(err)
	}
}
