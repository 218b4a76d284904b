package api

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestDeckWithExtraFieldRefused: a deck row with one field more than the
// header — a decimal comma left unquoted, as a spreadsheet in many locales
// writes 0.018 — is refused whole with 422, naming its line and both
// counts; the deck in force, and the one stored for the next start, stay
// as they were (London still at 0.018). Before, the extra field was
// dropped and London priced at 0.
func TestDeckWithExtraFieldRefused(t *testing.T) {
	h := newHarness(t)
	good := "prefix,country,destination,type,rate_per_minute\n" +
		"44,GB,United Kingdom,geographic,0.02\n" +
		"4420,GB,United Kingdom - London,geographic,0.018\n"
	h.mustDo("PUT", "/v1/rates", good, 200)
	london := func() map[string]any {
		t.Helper()
		var rate map[string]any
		_ = json.Unmarshal(h.mustDo("GET", "/v1/rates?number=%2B442079460018", "", 200).body, &rate)
		if rate["prefix"] != "4420" || rate["rate_per_minute"] != "0.018" {
			t.Fatalf("London priced as %v, want prefix 4420 at 0.018", rate)
		}
		return rate
	}
	london()

	bad := "prefix,country,destination,type,rate_per_minute\n" +
		"44,GB,United Kingdom,geographic,0.02\n" +
		"4420,GB,United Kingdom - London,geographic,0,018\n"
	r := h.mustDo("PUT", "/v1/rates", bad, 422)
	var e struct {
		Error struct {
			Code, Message string
			Lines         []struct {
				Line  int
				Error string
			}
		}
	}
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatal(err)
	}
	if e.Error.Code != "invalid_rate_deck" || len(e.Error.Lines) != 1 || e.Error.Lines[0].Line != 3 ||
		!strings.Contains(e.Error.Lines[0].Error, "6 fields, the header has 5") ||
		!strings.Contains(e.Error.Message, "line 3: 6 fields, the header has 5") {
		t.Fatalf("want line 3 refused with both counts: %s", r.body)
	}
	london()
	if got := string(h.ledger.Deck()); got != good {
		t.Fatalf("stored deck changed by a refused upload:\n%s", got)
	}
}

// "?number=+44…" as typed: the + arrives as a space and is read as the
// number's +; %2B works as ever; a space elsewhere is still no number.
func TestRatePreviewTakesAnUnencodedPlus(t *testing.T) {
	h := setup(t)
	for _, q := range []string{"number=+442079460018", "number=%2B442079460018"} {
		r := h.mustDo("GET", "/v1/rates?"+q, "", 200)
		if !strings.Contains(string(r.body), `"number":"+442079460018"`) || !strings.Contains(string(r.body), `"rate_per_minute":"0.018"`) {
			t.Fatalf("%s: %s", q, r.body)
		}
	}
	if r := h.do("GET", "/v1/rates?number=+xyz", ""); r.status != 422 {
		t.Fatalf("+xyz: %d %s", r.status, r.body)
	}
}
