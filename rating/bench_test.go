package rating

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"github.com/nyaruka/phonenumbers"
)

// bigDeck is a generated deck the size of a real wholesale one: rows spread
// over every country calling code, prefixes 1 to 7 digits past the code, a
// tenth of them with a second, newer row. numbers are dialled numbers that
// hit it, each as long as a real E.164 number.
func bigDeck(tb testing.TB, rows int) (csv []byte, prefixes, numbers []string) {
	tb.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	var regions []string
	for r := range phonenumbers.GetSupportedRegions() {
		regions = append(regions, r)
	}
	sort.Strings(regions)
	var b bytes.Buffer
	b.WriteString("prefix,country,destination,type,rate_per_minute,connection_fee,first_increment,next_increment,effective_from\n")
	seen := map[string]bool{}
	types := []Type{Geographic, Mobile, TollFree, Premium, Special}
	for n := 0; n < rows; {
		cc := regions[rng.IntN(len(regions))]
		p := CallingCode(cc)
		for i, l := 0, 1+rng.IntN(7); i < l; i++ {
			p += strconv.Itoa(rng.IntN(10))
		}
		if seen[p] || len(p) > 12 {
			continue
		}
		seen[p] = true
		prefixes = append(prefixes, p)
		rate := fmt.Sprintf("0.%04d", rng.IntN(10000))
		fmt.Fprintf(&b, "%s,%s,%s %s,%s,%s,,60,60,2026-01-01T00:00:00Z\n", p, cc, cc, p, types[rng.IntN(len(types))], rate)
		n++
		if n < rows && rng.IntN(10) == 0 {
			fmt.Fprintf(&b, "%s,%s,%s %s,%s,%s,,1,1,2026-09-01T00:00:00Z\n", p, cc, cc, p, Geographic, rate)
			n++
		}
	}
	for i := 0; i < 4096; i++ {
		num := prefixes[rng.IntN(len(prefixes))]
		for len(num) < 12 {
			num += strconv.Itoa(rng.IntN(10))
		}
		numbers = append(numbers, num)
	}
	return b.Bytes(), prefixes, numbers
}

const benchRows = 100_000

// BenchmarkDeckLoad parses and indexes a 100,000-row deck, as PUT /v1/rates
// and start-up do.
func BenchmarkDeckLoad(b *testing.B) {
	csv, _, _ := bigDeck(b, benchRows)
	b.SetBytes(int64(len(csv)))
	b.ReportAllocs()
	b.ResetTimer()
	var d *Deck
	for b.Loop() {
		var err error
		d, err = ParseDeck(bytes.NewReader(csv))
		if err != nil || d.Rows() != benchRows {
			b.Fatalf("rows %d, err %v", d.Rows(), err)
		}
	}
	b.ReportMetric(float64(len(d.nodes)), "trie-nodes")
	b.ReportMetric(float64(len(d.nodes))*float64(unsafe.Sizeof(trieNode{}))/(1<<20), "trie-MiB")
	b.ReportMetric(float64(benchRows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(b.Elapsed().Seconds()*1000/float64(b.N), "ms/load")
}

// BenchmarkDeckLookup prices a 12-digit number against the 100,000-row deck
// next to the cheapest thing a lookup could be — one hit in a Go map of the
// same rows keyed by their prefix — measured in the same run, so the ratio
// holds on a noisy machine. Target: within 3× of the map hit, no allocations.
func BenchmarkDeckLookup(b *testing.B) {
	csv, prefixes, numbers := bigDeck(b, benchRows)
	d, err := ParseDeck(bytes.NewReader(csv))
	if err != nil {
		b.Fatal(err)
	}
	byPrefix := make(map[string]Rate, len(prefixes))
	for _, p := range prefixes {
		byPrefix[p], _ = d.Lookup(p, time.Now())
	}
	keys := make([]string, len(numbers))
	for i, n := range numbers {
		r, ok := d.Lookup(n, time.Now())
		if !ok {
			b.Fatalf("%s not priced", n)
		}
		keys[i] = r.Prefix
	}
	now := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	var sink Rate
	mapHit := func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			sink = byPrefix[keys[i&4095]]
			i++
		}
	}
	lookup := func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			sink, _ = d.Lookup(numbers[i&4095], now)
			i++
		}
	}
	b.Run("map-hit", mapHit)
	b.Run("deck", lookup)
	b.Run("ratio", func(b *testing.B) {
		// testing.Benchmark cannot nest, so time fixed rounds by hand,
		// alternating the two so drift on a shared machine hits both alike.
		const rounds = 1 << 20
		var m, l time.Duration
		for b.Loop() {
			for range 3 {
				t := time.Now()
				for i := range rounds {
					sink = byPrefix[keys[i&4095]]
				}
				m += time.Since(t)
				t = time.Now()
				for i := range rounds {
					sink, _ = d.Lookup(numbers[i&4095], now)
				}
				l += time.Since(t)
			}
		}
		b.ReportMetric(float64(l)/float64(m), "x-map-hit")
	})
	_ = sink
}

// TestLookupAllocatesNothing holds Lookup to zero allocations on a real
// deck: metering looks a rate up per call, and garbage there is latency
// everywhere else.
func TestLookupAllocatesNothing(t *testing.T) {
	csv, _, numbers := bigDeck(t, 20_000)
	d, err := ParseDeck(bytes.NewReader(csv))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	i := 0
	if n := testing.AllocsPerRun(1000, func() {
		_, _ = d.Lookup(numbers[i%len(numbers)], now)
		i++
	}); n != 0 {
		t.Fatalf("Lookup allocates %.1f times a call", n)
	}
}

// BenchmarkDecide is the whole per-INVITE rating cost against the sample
// deck: normalising a national-format number with libphonenumber, the
// emergency check, the deck lookup and the plan choice.
func BenchmarkDecide(b *testing.B) {
	deck, cat := SampleDeck(), DefaultCatalog()
	c := Call{Trunk: TrunkCustomer, Dialled: "020 7946 0018", Org: OrgTerms{Country: "GB"},
		Licenses: []License{DomesticCallingPlan, CommunicationsCredits}, PoolsLeft: map[string]int{PlanDomestic: 10},
		Now: time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decide(deck, &cat, c); err != nil {
			b.Fatal(err)
		}
	}
}
