package rating

import (
	"bytes"
	_ "embed"
)

// SampleDeckCSV is the built-in sample rate deck, used until an operator
// uploads one with PUT /v1/rates.
//
//go:embed sample_deck.csv
var SampleDeckCSV []byte

// SampleDeck parses the built-in deck; it is tested, so it cannot fail at run
// time.
func SampleDeck() *Deck {
	d, err := ParseDeck(bytes.NewReader(SampleDeckCSV))
	if err != nil {
		panic("built-in rate deck is invalid: " + err.Error())
	}
	return d
}
