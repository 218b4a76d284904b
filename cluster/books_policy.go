// What Books is given: where admin changes go (SharedConfig), the slice
// policy with its defaults, and the etcd operation counts it reports.

package cluster

import (
	"fmt"
	"time"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/ledger"
)

// SharedConfig is where a cluster node's admin changes go: the shared
// configuration every node applies (Replica), or, for one node, the ledger.
type SharedConfig interface {
	CreateOrg(o ledger.Org) (ledger.Org, error)
	SetBlockPremium(org string, block bool) (ledger.Org, error)
	SetContacts(org string, c ledger.Contacts) (ledger.Org, error)
	SetFraudGuard(org string, fg ledger.FraudGuard) (ledger.Org, error)
	SetAutoRecharge(org string, ar ledger.AutoRecharge) (ledger.AutoRecharge, error)
	PutUser(u ledger.User) error
	PutTollFree(tf ledger.TollFree) error
	DeleteTollFree(org, number string) (bool, error)
	DeleteUser(org, id string) (bool, error)
	DeleteTrunk(id string) (bool, error)
	PutTrunk(tr ledger.Trunk) error
	PutDeck(csv []byte) error
}

// SlicePolicy sizes a node's slices from each org's local burn (the money
// per second its calls on this node take, measured at every report tick).
type SlicePolicy struct {
	// MinSlice is the smallest slice a node asks for in normal mode; an
	// org with less than it unallocated is in direct mode whatever its
	// burn.
	MinSlice decimal.Decimal
	// SliceBurn: a grant or top-up covers this much of the org's burn.
	SliceBurn time.Duration
	// LowWater: the node tops up, in the background, once the org's local
	// available money covers less than this much of its burn.
	LowWater time.Duration
	// DirectBelow: the org goes to direct mode once its unallocated money
	// covers less than this much of the node's burn of it (and back once
	// it covers twice as much).
	DirectBelow time.Duration
	// ReportEvery is the report tick: the node's unreported spend reaches
	// etcd at least this often, in one transaction per 60 orgs.
	ReportEvery time.Duration
	// IdleAfter: a slice of an org with no call up and nothing held or
	// spent on this node for this long is given back.
	IdleAfter time.Duration
}

// DefaultSlicePolicy: a grant covers a minute of burn, so an org calling
// steadily costs one grant per node per minute; the top-up starts 20 s
// before the slice runs dry, thousands of times an etcd round trip, so a
// slow etcd does not stall calls; direct mode takes over when 10 s of burn
// is left unallocated ("a few seconds" of the design, with room for the
// report lag of the other nodes); reports every second bound both what a
// crash leaves unreported and how stale the cluster balance is; an idle org
// gives its slice back after 2 minutes, long enough not to churn between
// calls of a quiet org. MinSlice 1.00 keeps slow orgs from taking
// cent-sized grants.
func DefaultSlicePolicy() SlicePolicy {
	return SlicePolicy{
		MinSlice:    decimal.RequireFromString("1.00"),
		SliceBurn:   60 * time.Second,
		LowWater:    20 * time.Second,
		DirectBelow: 10 * time.Second,
		ReportEvery: time.Second,
		IdleAfter:   2 * time.Minute,
	}
}

// Validate names the first bad setting.
func (p SlicePolicy) Validate() error {
	switch {
	case !p.MinSlice.IsPositive():
		return fmt.Errorf("cluster slice min %s: must be positive", p.MinSlice)
	case p.SliceBurn <= 0 || p.LowWater <= 0 || p.DirectBelow <= 0:
		return fmt.Errorf("cluster slice burn %s, low water %s, direct below %s: must be positive", p.SliceBurn, p.LowWater, p.DirectBelow)
	case p.LowWater >= p.SliceBurn:
		return fmt.Errorf("cluster slice low water %s: must be below the slice's %s of burn", p.LowWater, p.SliceBurn)
	case p.ReportEvery <= 0 || p.IdleAfter <= 0:
		return fmt.Errorf("cluster report every %s, idle after %s: must be positive", p.ReportEvery, p.IdleAfter)
	}
	return nil
}

// OpCounts are the etcd operations a Books made, by kind (a batched report
// of many orgs is one Report). Pool moves count too: one that took minutes
// as a grant, one that gave minutes back as a return, any other (a report,
// or a look that found no minute) as a report.
type OpCounts struct {
	Grants  int64 // resizes that took money from unallocated (grants, top-ups, direct-mode holds)
	Returns int64 // resizes that gave money back (idle, direct-mode switch, Close)
	Reports int64 // report transactions (each up to 60 orgs)
	Reads   int64 // account reads for the cluster balance
	Charges int64 // restart settlements and fundings
}
