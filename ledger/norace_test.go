//go:build !race

package ledger

const raceHeapFactor = 1.0
