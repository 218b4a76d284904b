package ledger

import "testing"

// A cluster node's ledger spends slices: crossing the auto-recharge
// threshold there starts no purchase (the cluster's payer decides from
// etcd), while the same spending on a single node does (the control).
func TestSliceOnlyStartsNoPurchase(t *testing.T) {
	for _, sliceOnly := range []bool{false, true} {
		l := open(t, t.TempDir())
		if sliceOnly {
			l.SliceOnly()
		}
		newOrg(t, l, "acme", "50.00")
		if _, err := l.SetAutoRecharge("acme", autoRecharge("10.00", "100.00")); err != nil {
			t.Fatal(err)
		}
		spend(t, l, "c1", 45, "1") // 5.00 left: below the threshold
		ps := pendingPurchases(t, l)
		if want := map[bool]int{false: 1, true: 0}[sliceOnly]; len(ps) != want {
			t.Fatalf("sliceOnly=%v: %d pending purchases %+v, want %d", sliceOnly, len(ps), ps, want)
		}
		if got, want := l.PendingPurchaseOf("acme") != "", !sliceOnly; got != want {
			t.Fatalf("sliceOnly=%v: PendingPurchaseOf says pending=%v", sliceOnly, got)
		}
		check(t, l)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
