package cluster

import "errors"

// The refusals of the cluster package, defined once; callers check them with
// errors.Is.
var (
	// ErrFenced: the node's lease is gone (revoked, or expired by etcd while
	// the node was paused or partitioned), so etcd refused the write. The
	// node must stop selling and join again with a new epoch.
	ErrFenced = errors.New("cluster: node fenced: its etcd lease is gone")
	// ErrLeaseDeadline: the node's local lease deadline has passed; it may
	// not sell (hold new increments) until a keepalive is acknowledged.
	ErrLeaseDeadline = errors.New("cluster: local lease deadline passed")
	// ErrInsufficientCredit: the org's unallocated credit is less than the
	// grant or debit asked for.
	ErrInsufficientCredit = errors.New("cluster: insufficient unallocated credit")
	// ErrGrantInFlight: the node already holds a slice of this org (one
	// grant per org per node).
	ErrGrantInFlight = errors.New("cluster: node already holds a slice of this org")
	// ErrSliceGone: the slice is no longer the holder's (returned, or
	// reclaimed by a survivor).
	ErrSliceGone = errors.New("cluster: slice no longer held")
	// ErrNodeAlive: Reclaim was asked for a node whose lease etcd has not
	// expired; its slices are still its own.
	ErrNodeAlive = errors.New("cluster: node's lease is still alive")
	// ErrIdempotencyConflict: a funding's idempotency key was used before
	// with another amount.
	ErrIdempotencyConflict = errors.New("cluster: idempotency key reused with another amount")
	// ErrContention: a compare-and-set lost maxAttempts times in a row.
	ErrContention = errors.New("cluster: too much contention on one org")
	// ErrInvalid: an argument a caller should never pass (non-positive
	// amount, spend beyond the slice, a '/' in an id).
	ErrInvalid = errors.New("cluster: invalid argument")
)
