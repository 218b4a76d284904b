package ledger

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Times become keys, and sortable numbers, here and nowhere else.
//
// A time in a key is its nanoseconds since the Unix epoch as a big-endian
// uint64 — the encoding CDR keys (r/{org}/{start:8}/{call}) have had from
// the start, so every key already on disk keeps its meaning byte for byte
// and no migration is needed. Big-endian bytes sort as the numbers do, and
// the numbers as the times do, but only from 1970: a negative UnixNano
// converted to uint64 wraps to above every later time (a from=1969-06-01
// filter then started after every CDR and found none), and UnixNano itself
// is undefined outside 1677-09-21 … 2262-04-11, where int64 nanoseconds run
// out. Hence two ranges, both ending at TimeMax:
//
//   - [1970-01-01, TimeMax]: the times that have a key. A CDR's start must
//     be one; OpenCall refuses a clock outside it, since the CDR could not
//     be filed in order.
//   - [TimeMin, TimeMax]: the times a client may send as a bound of a range
//     of keys. A bound before 1970 lies before every key: it is the lowest
//     key, so from=1969-06-01 means every CDR.
//
// A time outside is refused with ErrTimeRange, naming the range, and never
// wrapped into a key somewhere else. The ends are whole dates inside what
// int64 nanoseconds can hold, so the range reads as itself in a refusal.
var (
	TimeMin = time.Date(1678, 1, 1, 0, 0, 0, 0, time.UTC)
	TimeMax = time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC)
	keyMin  = time.Unix(0, 0).UTC()
)

// CheckTime refuses a time no key can be compared with.
func CheckTime(t time.Time) error {
	if t.Before(TimeMin) || t.After(TimeMax) {
		return fmt.Errorf("%w: %s is not from %s to %s (UTC)", ErrTimeRange,
			t.Format(time.RFC3339Nano), TimeMin.Format(time.DateOnly), TimeMax.Format(time.DateOnly))
	}
	return nil
}

// timeKey is the key of t: its nanoseconds since the Unix epoch, for t from
// 1970-01-01 to TimeMax. Equal to uint64(t.UnixNano()) wherever that is
// right, so it is what every CDR key on disk holds.
func timeKey(t time.Time) (uint64, error) {
	if t.Before(keyMin) || t.After(TimeMax) {
		return 0, fmt.Errorf("%w: %s is not from %s to %s (UTC), the times a key can hold", ErrTimeRange,
			t.Format(time.RFC3339Nano), keyMin.Format(time.DateOnly), TimeMax.Format(time.DateOnly))
	}
	return uint64(t.UnixNano()), nil
}

// boundKey is where a range bounded at t starts among the keys: the key of
// a time at or after t is at least boundKey(t), the key of a time before t
// is below it. t may be any time CheckTime accepts.
func boundKey(t time.Time) (uint64, error) {
	if err := CheckTime(t); err != nil {
		return 0, err
	}
	if t.Before(keyMin) {
		return 0, nil
	}
	return timeKey(t)
}

// appendTimeKey appends a key's 8 bytes, big-endian so they sort as the
// times do.
func appendTimeKey(b []byte, k uint64) []byte { return binary.BigEndian.AppendUint64(b, k) }

// unixMinute numbers the minute t falls in from the Unix epoch, rounding
// down on both sides of 1970 (t.Unix()/60 rounds towards zero: the two
// minutes around the epoch would be one, and a negative minute's slot
// index negative).
func unixMinute(t time.Time) int64 {
	s := t.Unix()
	m := s / 60
	if s%60 < 0 {
		m--
	}
	return m
}
