package rating

import "testing"

func TestHighRisk(t *testing.T) {
	prefixes := []string{"53", "252", "2521", "882", "88"}
	for _, tc := range []struct {
		name, number, want string
	}{
		{"not listed", "442079460018", ""},
		{"listed", "5378001234", "53"},
		{"longest of two", "252123456789", "2521"},
		{"shorter when the longer does not match", "252612345678", "252"},
		{"longest whatever the order", "88212345678", "882"},
		{"a prefix of the number, not the other way", "5", ""},
		{"empty number", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := HighRisk(prefixes, tc.number); got != tc.want {
				t.Errorf("HighRisk(%q) = %q, want %q", tc.number, got, tc.want)
			}
		})
	}
	if got := HighRisk(nil, "5378001234"); got != "" {
		t.Errorf("no prefixes: %q, want none", got)
	}
}
