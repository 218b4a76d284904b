package ledger

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// OpenCalls lists calls the ledger holds money for.
func (l *Ledger) OpenCalls() []Call {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Call, 0, len(l.calls))
	for _, c := range l.calls {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// CDRs returns an org's CDRs whose start is in [from, to), oldest first;
// zero times mean unbounded. They are read from the store, so an org's
// history costs no memory while nobody asks for it.
func (l *Ledger) CDRs(org string, from, to time.Time) ([]CDR, error) {
	var out []CDR
	err := l.EachCDR(org, from, to, func(c *CDR) error {
		out = append(out, *c)
		return nil
	})
	return out, err
}

// EachCDR streams an org's CDRs in [from, to) in start order. A bound
// outside what CheckTime accepts is refused with ErrTimeRange.
func (l *Ledger) EachCDR(org string, from, to time.Time, fn func(*CDR) error) error {
	lo, hi := keyCDRs(org), upperBound(keyCDRs(org))
	if !from.IsZero() {
		k, err := boundKey(from)
		if err != nil {
			return fmt.Errorf("CDRs of %s from: %w", org, err)
		}
		lo = appendTimeKey(keyCDRs(org), k)
	}
	if !to.IsZero() {
		k, err := boundKey(to)
		if err != nil {
			return fmt.Errorf("CDRs of %s to: %w", org, err)
		}
		hi = appendTimeKey(keyCDRs(org), k)
	}
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		var c CDR
		if err := decodeRecord(it.Key(), it.Value(), &c); err != nil {
			return err
		}
		if err := fn(&c); err != nil {
			return err
		}
	}
	return it.Error()
}

// Transactions returns up to limit of an org's balance movements with a
// sequence number above after, oldest first.
func (l *Ledger) Transactions(org string, after uint64, limit int) ([]Entry, error) {
	if after == math.MaxUint64 {
		// Nothing comes after the last sequence number; after+1 would wrap
		// to 0 and page from the first entry again.
		return nil, nil
	}
	lo := keyEntry(org, after+1)
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: upperBound(keyEntries(org))})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []Entry
	for it.First(); it.Valid() && len(out) < limit; it.Next() {
		var e Entry
		if err := decodeRecord(it.Key(), it.Value(), &e); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, it.Error()
}
