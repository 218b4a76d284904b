package ledger

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The crash test runs the ledger in a child process (this test binary,
// re-executed) that applies a random stream of operations from many
// goroutines and prints each one only after the ledger acknowledged it. The
// parent kills the child with SIGKILL at a random moment, reopens the store
// and checks that every acknowledged operation is there, none is there
// twice, every call left up was settled, and all invariants hold — then
// starts the next child on the same store.

const crashChildEnv = "CREDITGATE_LEDGER_CRASH_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		os.Exit(crashChild(dir))
	}
	os.Exit(m.Run())
}

var crashOrgs = []string{"o1", "o2", "o3"}

// crashChild runs until killed, or for 20 s at most so a lost parent does
// not leave it running.
func crashChild(dir string) int {
	cycle, _ := strconv.Atoi(os.Getenv("CREDITGATE_CRASH_CYCLE"))
	seed, _ := strconv.ParseUint(os.Getenv("CREDITGATE_CRASH_SEED"), 10, 64)
	l, err := Open(dir, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		return 2
	}
	for _, o := range crashOrgs {
		if _, err := l.CreateOrg(Org{ID: o, Country: "US", Region: "us", BillingRegion: "us"}); err != nil && !errors.Is(err, ErrOrgExists) {
			fmt.Fprintln(os.Stderr, "org:", err)
			return 2
		}
	}
	var outMu sync.Mutex
	ack := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(os.Stdout, format+"\n", args...) // unbuffered: one write per line
	}
	ack("ready")
	deadline := time.Now().Add(20 * time.Second)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(g)))
			for i := 0; time.Now().Before(deadline); i++ {
				org := crashOrgs[r.IntN(len(crashOrgs))]
				if r.IntN(4) == 0 {
					key := fmt.Sprintf("f%d-%d-%d", cycle, g, i)
					for range 1 + r.IntN(2) { // sometimes retried
						if _, err := l.Fund(org, d("50"), key); err == nil {
							ack("fund %s %s 50", org, key)
						}
					}
					continue
				}
				id := fmt.Sprintf("k%d-%d-%d", cycle, g, i)
				c := creditCall(id, org, []string{"0.01", "0.25", "1.00"}[r.IntN(3)])
				if _, err := l.OpenCall(c, time.Now()); err != nil {
					continue
				}
				ack("open %s", id)
				if err := l.Answer(id, time.Now()); err != nil {
					continue
				}
				ack("answer %s", id)
				for n := 1; n <= 1+r.IntN(20); n++ {
					_, err := l.Step(id, n, time.Now())
					if r.IntN(5) == 0 { // a retry must not debit twice
						_, err = l.Step(id, n, time.Now())
					}
					if errors.Is(err, ErrInsufficientCredit) {
						ack("exhausted %s %d", id, n)
						break
					}
					if err != nil {
						break
					}
					ack("step %s %d", id, n)
				}
				if r.IntN(10) < 7 {
					if _, err := l.CloseCall(id, CallEnd{At: time.Now(), Reason: ReasonCallerHangup}); err == nil {
						ack("close %s", id)
					}
				}
			}
		})
	}
	wg.Wait()
	return 0
}

type crashAcks struct {
	funds     map[string]string // org/key → amount
	opened    map[string]bool
	answered  map[string]bool
	stepped   map[string]int // highest n whose step (commit n, hold n+1) was acknowledged
	exhausted map[string]int
	closed    map[string]bool
}

func readAcks(r io.Reader, readyc chan<- struct{}) (crashAcks, bool) {
	a := crashAcks{funds: map[string]string{}, opened: map[string]bool{}, answered: map[string]bool{},
		stepped: map[string]int{}, exhausted: map[string]int{}, closed: map[string]bool{}}
	ready := false
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "ready":
			ready = true
			close(readyc)
		case "fund":
			if len(f) == 4 {
				a.funds[f[1]+"/"+f[2]] = f[3]
			}
		case "open":
			a.opened[f[1]] = true
		case "answer":
			a.answered[f[1]] = true
		case "step", "exhausted":
			if len(f) != 3 {
				continue // a line cut by the kill was never acknowledged whole
			}
			n, err := strconv.Atoi(f[2])
			if err != nil {
				continue
			}
			if f[0] == "step" {
				a.stepped[f[1]] = max(a.stepped[f[1]], n)
			} else {
				a.exhausted[f[1]] = n
			}
		case "close":
			a.closed[f[1]] = true
		}
	}
	return a, ready
}

func TestCrashKill9(t *testing.T) {
	cycles := 20
	if testing.Short() {
		cycles = 3
	}
	dir := t.TempDir()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	var total crashAcks
	totalOps := 0
	for cycle := range cycles {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, fmt.Sprintf("CREDITGATE_CRASH_CYCLE=%d", cycle),
			fmt.Sprintf("CREDITGATE_CRASH_SEED=%d", seed+uint64(cycle)))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		type result struct {
			acks  crashAcks
			ready bool
		}
		got := make(chan result, 1)
		ready := make(chan struct{})
		go func() {
			a, ok := readAcks(out, ready)
			got <- result{a, ok}
		}()
		select {
		case <-ready:
		case <-time.After(60 * time.Second):
		}
		time.Sleep(time.Duration(50+r.IntN(400)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("cycle %d: kill: %v", cycle, err)
		}
		res := <-got
		_ = cmd.Wait()
		if !res.ready {
			t.Fatalf("cycle %d: the child never became ready", cycle)
		}
		a := res.acks
		totalOps += len(a.funds) + len(a.opened) + len(a.answered) + len(a.stepped) + len(a.closed)

		l := open(t, dir)
		check(t, l)
		if up := l.OpenCalls(); len(up) != 0 {
			t.Fatalf("cycle %d: %d calls still up after reopening", cycle, len(up))
		}
		for k, amount := range a.funds {
			en, ok := l.fundKeys[k]
			if !ok || !en.Amount.Equal(d(amount)) {
				t.Fatalf("cycle %d: acknowledged funding %s of %s is missing (%+v)", cycle, k, amount, en)
			}
		}
		for id := range a.opened {
			cdr, err := l.CloseCall(id, CallEnd{At: t0, Reason: ReasonAdmin})
			if err != nil {
				t.Fatalf("cycle %d: acknowledged call %s has no CDR: %v", cycle, id, err)
			}
			if cdr.DisconnectReason == ReasonAdmin {
				t.Fatalf("cycle %d: call %s was still up after reopening", cycle, id)
			}
			// step n acknowledged: 1..n committed and n+1 held, which the
			// restart settles as the started increment.
			if n, ok := a.stepped[id]; ok && cdr.BilledS < n+1 {
				t.Fatalf("cycle %d: call %s acknowledged step %d but billed %d s", cycle, id, n, cdr.BilledS)
			}
			if n, ok := a.exhausted[id]; ok && cdr.BilledS < n {
				t.Fatalf("cycle %d: call %s acknowledged running out at %d but billed %d s", cycle, id, n, cdr.BilledS)
			}
			if a.answered[id] && cdr.BilledS < 1 {
				t.Fatalf("cycle %d: answered call %s billed nothing", cycle, id)
			}
			if a.closed[id] && cdr.DisconnectReason == ReasonRestart {
				t.Fatalf("cycle %d: call %s closed before the kill, settled again by the restart", cycle, id)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if total.funds == nil {
			total = a
		} else {
			for k, v := range a.funds {
				total.funds[k] = v
			}
		}
	}
	// Every funding ever acknowledged, in every cycle, is still there once.
	l := open(t, dir)
	defer l.Close()
	check(t, l)
	for k := range total.funds {
		if _, ok := l.fundKeys[k]; !ok {
			t.Fatalf("funding %s lost by a later cycle", k)
		}
	}
	t.Logf("%d kill -9 cycles, %d acknowledged operations checked", cycles, totalOps)
}
