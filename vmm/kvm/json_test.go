package kvm

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestRegisterBlocksRoundTripAsBase64(t *testing.T) {
	type blocks struct {
		LAPIC LAPIC
		XSave XSave
		Chip  IRQChip
	}
	var in blocks
	for i := range in.LAPIC.Regs {
		in.LAPIC.Regs[i] = byte(i * 7)
	}
	for i := range in.XSave.Region {
		in.XSave.Region[i] = uint32(i) * 0x01010101
	}
	in.Chip.ChipID = IRQChipIOAPIC
	in.Chip.Chip[511] = 0x5a
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 8000 {
		t.Errorf("encoded %d bytes; base64 should keep it near 7 KiB", len(b))
	}
	var out blocks
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out != in {
		t.Fatal("round trip changed the register blocks")
	}
}

func TestRegisterBlocksRejectWrongSizes(t *testing.T) {
	tests := []struct {
		name string
		into any
		json string
	}{
		{"short LAPIC", &LAPIC{}, `"AAAA"`},
		{"LAPIC not a string", &LAPIC{}, `[1,2,3]`},
		{"bad base64", &LAPIC{}, `"` + strings.Repeat("!", 1368) + `"`},
		{"short XSAVE", &XSave{}, `"AAAA"`},
		{"chip without state", &IRQChip{}, `{"ChipID":2}`},
		{"chip with unknown field", &IRQChip{}, `{"ChipID":2,"Chip":"","Extra":1}`},
	}
	for _, tt := range tests {
		if err := json.Unmarshal([]byte(tt.json), tt.into); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}
