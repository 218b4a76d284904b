//go:build race

package ledger

// The race detector adds its own bookkeeping to every allocation.
const raceHeapFactor = 2.5
