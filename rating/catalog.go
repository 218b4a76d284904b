package rating

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"time"

	"github.com/shopspring/decimal"
	"gopkg.in/yaml.v3"
)

// Trunk kinds a call can arrive on (README, Admin API: PUT /v1/trunks).
const (
	TrunkCustomer     = "customer"
	TrunkConferencing = "conferencing"
	TrunkCarrier      = "carrier"
)

// Where a pool's minutes may be spent.
const (
	DestDomestic      = "domestic"
	DestInternational = "international"
	DestZoneA         = "zone_a"
	DestAny           = "any"
)

// Catalog is the plan catalogue: which calls each license includes, from
// which monthly minute pool, and what inbound toll-free minutes cost. Its
// defaults are catalog.yaml beside this file; the config file may override
// them. Decide reads it; the ledger sizes its pools from it.
type Catalog struct {
	Pools           []PoolSpec   `yaml:"pools"`
	ZoneA           []string     `yaml:"zone_a"`
	InboundTollFree TollFreeSpec `yaml:"inbound_toll_free"`
}

// PoolSpec is one minute pool of the catalogue.
type PoolSpec struct {
	Name              string    `yaml:"name"`
	MinutesPerLicense int       `yaml:"minutes_per_license"`
	Licenses          []License `yaml:"licenses"`
	Trunk             string    `yaml:"trunk"`
	Destinations      string    `yaml:"destinations"`
	Types             []Type    `yaml:"types"`
}

// TollFreeSpec prices inbound calls to toll-free numbers, per country of the
// number. Rates are decimal strings, like the deck's.
type TollFreeSpec struct {
	FirstIncrement int               `yaml:"first_increment"`
	NextIncrement  int               `yaml:"next_increment"`
	DefaultRate    string            `yaml:"default_rate"`
	Rates          map[string]string `yaml:"rates"`
}

//go:embed catalog.yaml
var defaultCatalogYAML []byte

// DefaultCatalog is the built-in catalogue. It is tested, so it cannot fail
// at run time.
func DefaultCatalog() Catalog {
	c, err := ParseCatalog(defaultCatalogYAML)
	if err != nil {
		panic("built-in plan catalogue is invalid: " + err.Error())
	}
	return c
}

// DefaultCatalogYAML is the built-in catalogue as shipped, documented.
func DefaultCatalogYAML() []byte { return slices.Clone(defaultCatalogYAML) }

// ParseCatalog reads a whole catalogue; unknown keys are errors.
func ParseCatalog(b []byte) (Catalog, error) {
	var c Catalog
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Catalog{}, fmt.Errorf("plan catalogue: %w", err)
	}
	return c, c.Validate()
}

// MaxPools bounds the catalogue; each pool is a ledger record per org and month.
const MaxPools = 16

var poolNameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)

// Validate names the first bad key, as the config file spells it.
func (c Catalog) Validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("catalog.%s: %s", key, fmt.Sprintf(format, args...))
	}
	if len(c.Pools) > MaxPools {
		return bad("pools", "at most %d pools", MaxPools)
	}
	seen := map[string]bool{}
	for i, p := range c.Pools {
		key := fmt.Sprintf("pools[%d]", i)
		if !poolNameRE.MatchString(p.Name) {
			return bad(key+".name", "%q: want lower-case letters, digits and '_', starting with a letter", p.Name)
		}
		if seen[p.Name] {
			return bad(key+".name", "pool %q appears twice", p.Name)
		}
		seen[p.Name] = true
		if p.MinutesPerLicense < 0 || p.MinutesPerLicense > 1_000_000 {
			return bad(key+".minutes_per_license", "want 0 to 1000000, got %d", p.MinutesPerLicense)
		}
		if len(p.Licenses) == 0 {
			return bad(key+".licenses", "a pool needs at least one license")
		}
		for _, l := range p.Licenses {
			if _, err := ParseLicense(string(l)); err != nil {
				return bad(key+".licenses", "%v", err)
			}
			if l == CommunicationsCredits {
				return bad(key+".licenses", "communications_credits pays on credits; it includes no minutes")
			}
		}
		switch p.Trunk {
		case TrunkCustomer, TrunkConferencing:
		default:
			return bad(key+".trunk", "%q: want customer or conferencing", p.Trunk)
		}
		switch p.Destinations {
		case DestDomestic, DestInternational, DestZoneA, DestAny:
		default:
			return bad(key+".destinations", "%q: want domestic, international, zone_a or any", p.Destinations)
		}
		if len(p.Types) == 0 {
			return bad(key+".types", "a pool needs at least one destination type")
		}
		for _, t := range p.Types {
			switch t {
			case Geographic, Mobile, Special:
			case Premium, TollFree:
				return bad(key+".types", "%s is never included in a plan: it is paid on credits", t)
			default:
				return bad(key+".types", "%q: want geographic, mobile or special", t)
			}
		}
	}
	for _, cc := range c.ZoneA {
		if !KnownCountry(cc) {
			return bad("zone_a", "%q is not an ISO 3166 alpha-2 country with a numbering plan", cc)
		}
	}
	tf := c.InboundTollFree
	for key, n := range map[string]int{"first_increment": tf.FirstIncrement, "next_increment": tf.NextIncrement} {
		if n < 1 || n > MaxIncrementSecs {
			return bad("inbound_toll_free."+key, "want 1 to %d seconds, got %d", MaxIncrementSecs, n)
		}
	}
	if tf.DefaultRate != "" {
		if _, err := parseMoney(tf.DefaultRate); err != nil {
			return bad("inbound_toll_free.default_rate", "%v", err)
		}
	}
	for cc, r := range tf.Rates {
		if !KnownCountry(cc) {
			return bad("inbound_toll_free.rates", "%q is not an ISO 3166 alpha-2 country with a numbering plan", cc)
		}
		if _, err := parseMoney(r); err != nil {
			return bad("inbound_toll_free.rates."+cc, "%v", err)
		}
	}
	return nil
}

// TollFreeRate is the rate an org pays for an inbound call to one of its
// toll-free numbers in country cc; false if the catalogue prices none.
func (c *Catalog) TollFreeRate(cc string) (Rate, bool) {
	tf := c.InboundTollFree
	s, ok := tf.Rates[cc]
	if !ok {
		s = tf.DefaultRate
	}
	if s == "" {
		return Rate{}, false
	}
	per, err := parseMoney(s)
	if err != nil {
		return Rate{}, false
	}
	return Rate{Prefix: CallingCode(cc), Country: cc, Destination: "Inbound toll-free", Type: TollFree,
		PerMinute: per, ConnectionFee: decimal.Zero,
		FirstIncrement: time.Duration(tf.FirstIncrement) * time.Second,
		NextIncrement:  time.Duration(tf.NextIncrement) * time.Second}, true
}

// pool finds the first pool of the catalogue that includes a call of this
// trunk kind, from an org in orgCountry, by a user holding licenses, to a
// destination priced by rate.
func (c *Catalog) pool(trunk, orgCountry string, licenses []License, rate Rate) string {
	for i := range c.Pools {
		p := &c.Pools[i]
		if p.Trunk != trunk || !slices.Contains(p.Types, rate.Type) {
			continue
		}
		switch p.Destinations {
		case DestDomestic:
			if rate.Country != orgCountry {
				continue
			}
		case DestInternational:
			if rate.Country == orgCountry {
				continue
			}
		case DestZoneA:
			if !slices.Contains(c.ZoneA, rate.Country) {
				continue
			}
		}
		for _, l := range p.Licenses {
			if slices.Contains(licenses, l) {
				return p.Name
			}
		}
	}
	return ""
}
