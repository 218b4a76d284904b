package ledger

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"
)

// fuzzTime turns two fuzzed integers into a time: nanoseconds since the
// epoch (every time UnixNano can express, 1677 to 2262: the edges of the
// key range and both sides of 1970) or, with inSeconds, seconds since the
// epoch — all of time.Time's range but the first 1969 years of its
// 292-billion-year past, which time.Unix cannot reach without overflowing.
func fuzzTime(n int64, nsec uint32, inSeconds bool) (time.Time, bool) {
	if !inSeconds {
		return time.Unix(0, n), true
	}
	const unixToInternal = 62135596800 // seconds from year 1 to 1970
	if n > math.MaxInt64-unixToInternal {
		return time.Time{}, false
	}
	return time.Unix(n, int64(nsec%1e9)), true
}

// FuzzTimeKey: for any two times the client or a clock could produce,
// keys keep their order (a < b ⇔ key(a) < key(b), bytes included), a
// key is the old uint64(UnixNano) encoding byte for byte (keys on disk
// stay valid), a range bound splits keyed times exactly where the times
// split, and a time outside the range is refused, never turned into a key.
func FuzzTimeKey(f *testing.F) {
	for _, n := range []int64{math.MinInt64, TimeMin.UnixNano() - 1, TimeMin.UnixNano(), -1, 0, 1,
		time.Date(1969, 6, 1, 0, 0, 0, 0, time.UTC).UnixNano(), time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano(),
		TimeMax.UnixNano(), TimeMax.UnixNano() + 1, math.MaxInt64} {
		f.Add(n, uint32(0), false, int64(0), uint32(0), false)
		f.Add(n, uint32(0), false, n+1, uint32(0), false)
	}
	f.Add(int64(math.MaxInt64-62135596800), uint32(999999999), true, time.Time{}.Unix(), uint32(0), true)
	f.Add(int64(-62135596800*2), uint32(1), true, int64(-1), uint32(999999999), true)
	f.Fuzz(func(t *testing.T, an int64, ans uint32, as bool, bn int64, bns uint32, bs bool) {
		a, ok1 := fuzzTime(an, ans, as)
		b, ok2 := fuzzTime(bn, bns, bs)
		if !ok1 || !ok2 {
			return
		}
		inRange := func(t time.Time) bool { return !t.Before(TimeMin) && !t.After(TimeMax) }
		keyed := func(t time.Time) bool { return !t.Before(time.Unix(0, 0)) && !t.After(TimeMax) }

		for _, x := range []time.Time{a, b} {
			if err := CheckTime(x); (err == nil) != inRange(x) || (err != nil && !errors.Is(err, ErrTimeRange)) {
				t.Fatalf("CheckTime(%s) = %v", x, err)
			}
			k, err := timeKey(x)
			if (err == nil) != keyed(x) || (err != nil && (!errors.Is(err, ErrTimeRange) || k != 0)) {
				t.Fatalf("timeKey(%s) = %d, %v", x, k, err)
			}
			if err == nil {
				// The encoding on disk before this helper, and one key per
				// time: the key gives the time back.
				if old := binary.BigEndian.AppendUint64(nil, uint64(x.UnixNano())); !bytes.Equal(appendTimeKey(nil, k), old) {
					t.Fatalf("key of %s is %x, the keys on disk hold %x", x, appendTimeKey(nil, k), old)
				}
				if back := time.Unix(0, int64(k)); !back.Equal(x) {
					t.Fatalf("key of %s reads back as %s", x, back)
				}
			}
			bk, err := boundKey(x)
			if (err == nil) != inRange(x) {
				t.Fatalf("boundKey(%s) = %d, %v", x, bk, err)
			}
			if inRange(x) {
				m := unixMinute(x)
				if s := x.Unix(); m*60 > s || s >= (m+1)*60 {
					t.Fatalf("unixMinute(%s) = %d, not the minute of second %d", x, m, s)
				}
			}
		}

		ka, errA := timeKey(a)
		kb, errB := timeKey(b)
		if errA == nil && errB == nil {
			if got, want := bytes.Compare(appendTimeKey(nil, ka), appendTimeKey(nil, kb)), a.Compare(b); got != want {
				t.Fatalf("%s vs %s: keys compare %d, times %d", a, b, got, want)
			}
		}
		// A range from b holds a keyed time a exactly when a is not before b.
		if bk, err := boundKey(b); errA == nil && err == nil && (ka >= bk) != !a.Before(b) {
			t.Fatalf("bound %s (key %d) and time %s (key %d) disagree", b, bk, a, ka)
		}
		if ba, errA := boundKey(a); errA == nil {
			if bb, errB := boundKey(b); errB == nil && a.Before(b) && ba > bb {
				t.Fatalf("bounds %s < %s, keys %d > %d", a, b, ba, bb)
			}
		}
	})
}

// TestCDRRangeBounds: bounds before 1970 take every CDR, bounds outside
// TimeMin..TimeMax are refused, and a clock without a key opens no call
// (a paid call would have a CDR that cannot be filed by its start).
func TestCDRRangeBounds(t *testing.T) {
	l := open(t, t.TempDir())
	defer l.Close()
	newOrg(t, l, "acme", "50.00")
	for i := range 3 {
		id := fmt.Sprintf("c%d", i)
		start := t0.Add(time.Duration(i) * time.Hour)
		if _, err := l.OpenCall(creditCall(id, "acme", "0.01"), start); err != nil {
			t.Fatal(err)
		}
		if _, err := l.CloseCall(id, CallEnd{At: start.Add(time.Second), Reason: ReasonCanceled}); err != nil {
			t.Fatal(err)
		}
	}
	date := func(y int, m time.Month, d int) time.Time { return time.Date(y, m, d, 0, 0, 0, 0, time.UTC) }
	for _, tc := range []struct {
		name     string
		from, to time.Time
		want     int
	}{
		{"from before 1970", date(1969, 6, 1), time.Time{}, 3},
		{"from the first supported day", TimeMin, time.Time{}, 3},
		{"from the epoch", time.Unix(0, 0), time.Time{}, 3},
		{"to before 1970", time.Time{}, date(1969, 6, 1), 0},
		{"from before 1970 to the second call", date(1969, 6, 1), t0.Add(time.Hour), 1},
		{"to the last supported day", t0.Add(time.Hour), TimeMax, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := l.CDRs("acme", tc.from, tc.to)
			if err != nil || len(got) != tc.want {
				t.Fatalf("CDRs(%s, %s) = %d, %v; want %d", tc.from, tc.to, len(got), err, tc.want)
			}
		})
	}
	for _, bad := range []time.Time{date(1600, 1, 1), TimeMin.Add(-time.Nanosecond), TimeMax.Add(time.Nanosecond), date(9999, 12, 31)} {
		if _, err := l.CDRs("acme", bad, time.Time{}); !errors.Is(err, ErrTimeRange) {
			t.Errorf("from %s: %v, want ErrTimeRange", bad, err)
		}
		if _, err := l.CDRs("acme", time.Time{}, bad); !errors.Is(err, ErrTimeRange) {
			t.Errorf("to %s: %v, want ErrTimeRange", bad, err)
		}
	}

	before := balance(t, l, "acme")
	for _, clock := range []time.Time{date(1969, 12, 31), TimeMax.Add(time.Nanosecond)} {
		if _, err := l.OpenCall(creditCall("skewed", "acme", "0.01"), clock); !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrTimeRange) {
			t.Fatalf("call opened on a clock reading %s: %v", clock, err)
		}
	}
	if after := balance(t, l, "acme"); !same(before, after) || len(l.OpenCalls()) != 0 {
		t.Fatalf("a refused open changed the org: %+v → %+v", before, after)
	}
	check(t, l)
}
