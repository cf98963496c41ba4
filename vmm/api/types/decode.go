package types

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// MaxBodySize caps a request body, as Firecracker's HTTP server caps its
// payloads (51,200 bytes); the largest legitimate body is a few hundred.
const MaxBodySize = 50 << 10

// maxDepth bounds JSON nesting. The deepest schema is three objects deep;
// the bound keeps a hostile body from driving deep recursion.
const maxDepth = 16

// Decode reads exactly one JSON value of type T from data, strictly: the
// value must be an object with only the fields of T (matched exactly, not
// case-insensitively as encoding/json would), none repeated, every
// required field present, no null where a value is required, and every
// value of the right JSON type and range for its Go field.
func Decode[T any](data []byte) (T, error) {
	var v T
	if len(bytes.TrimSpace(data)) == 0 {
		return v, fmt.Errorf("empty body: a JSON %s object is required", typeName(reflect.TypeFor[T]()))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := checkValue(dec, reflect.TypeFor[T](), "", 0, false); err != nil {
		return v, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return v, errors.New("the body holds more than one JSON value")
	}
	// The walk above has already proved the shape; decoding again with
	// unknown fields disallowed is a second line of defence.
	strict := json.NewDecoder(bytes.NewReader(data))
	strict.DisallowUnknownFields()
	if err := strict.Decode(&v); err != nil {
		return v, fmt.Errorf("decode %s: %w", typeName(reflect.TypeFor[T]()), err)
	}
	return v, nil
}

// field is what the walk needs to know about one struct field.
type field struct {
	name     string
	typ      reflect.Type
	required bool
	// nonEmpty marks enum strings for which "" is not a value: present,
	// the field must name one (Firecracker's decoder refuses
	// "cpu_template": "").
	nonEmpty bool
}

// structFields caches the JSON fields of each struct type.
var structFields sync.Map // reflect.Type → []field

func fieldsOf(t reflect.Type) []field {
	if f, ok := structFields.Load(t); ok {
		return f.([]field)
	}
	var out []field
	for i := range t.NumField() {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		tags := strings.Split(sf.Tag.Get("volt"), ",")
		out = append(out, field{name: name, typ: sf.Type, required: slices.Contains(tags, "required"), nonEmpty: slices.Contains(tags, "nonempty")})
	}
	structFields.Store(t, out)
	return out
}

// typeName is the swagger name of a body type, for messages.
func typeName(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case reflect.TypeFor[MachineConfigurationPatch]():
		return "MachineConfiguration"
	case reflect.TypeFor[VM]():
		return "Vm"
	case reflect.TypeFor[FullVMConfiguration]():
		return "FullVmConfiguration"
	}
	return t.Name()
}

// at joins a field path for messages: "rate_limiter.bandwidth.size".
func at(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// describe names a JSON token's type for messages.
func describe(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '{' {
			return "an object"
		}
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "the number " + v.String()
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%v", tok)
}

func syntaxError(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("malformed JSON at byte %d: %v", se.Offset, se)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return errors.New("malformed JSON: the body ends in the middle of a value")
	}
	return fmt.Errorf("malformed JSON: %w", err)
}

// checkValue reads one value from dec and checks it against t; nonEmpty
// refuses an empty string.
func checkValue(dec *json.Decoder, t reflect.Type, path string, depth int, nonEmpty bool) error {
	if depth > maxDepth {
		return fmt.Errorf("%s: JSON nested deeper than %d levels", path, maxDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return syntaxError(err)
	}
	where := path
	if where == "" {
		where = "the body"
	}
	if tok == nil {
		// Null means "absent" only where the field may be absent: a
		// pointer or a list. Elsewhere Firecracker's decoder rejects it.
		if t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			return nil
		}
		return fmt.Errorf("%s must not be null", where)
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if d, ok := tok.(json.Delim); !ok || d != '{' {
			return fmt.Errorf("%s: want a JSON object (%s), got %s", where, typeName(t), describe(tok))
		}
		return checkObject(dec, t, path, depth)
	case reflect.Slice:
		if d, ok := tok.(json.Delim); !ok || d != '[' {
			return fmt.Errorf("%s: want an array, got %s", where, describe(tok))
		}
		for i := 0; dec.More(); i++ {
			if err := checkValue(dec, t.Elem(), fmt.Sprintf("%s[%d]", path, i), depth+1, false); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil {
			return syntaxError(err)
		}
		return nil
	case reflect.String:
		str, ok := tok.(string)
		if !ok {
			return fmt.Errorf("%s: want a string, got %s", where, describe(tok))
		}
		if nonEmpty && str == "" {
			return fmt.Errorf("%s must not be an empty string: omit it or give a value", where)
		}
	case reflect.Bool:
		if _, ok := tok.(bool); !ok {
			return fmt.Errorf("%s: want true or false, got %s", where, describe(tok))
		}
	case reflect.Int64:
		n, ok := tok.(json.Number)
		if !ok {
			return fmt.Errorf("%s: want an integer, got %s", where, describe(tok))
		}
		if _, err := strconv.ParseInt(n.String(), 10, 64); err != nil {
			if errors.Is(err, strconv.ErrRange) {
				return fmt.Errorf("%s: %s is out of range", where, n)
			}
			return fmt.Errorf("%s: want an integer, got %s", where, n)
		}
	default:
		return fmt.Errorf("%s: internal error: no check for Go type %s", where, t)
	}
	return nil
}

func checkObject(dec *json.Decoder, t reflect.Type, path string, depth int) error {
	fields := fieldsOf(t)
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return syntaxError(err)
		}
		key, _ := tok.(string) // object keys are always strings
		i := slices.IndexFunc(fields, func(f field) bool { return f.name == key })
		if i < 0 {
			var known []string
			for _, f := range fields {
				known = append(known, f.name)
			}
			return fmt.Errorf("unknown field %q (%s has: %s)", at(path, key), typeName(t), strings.Join(known, ", "))
		}
		if seen[key] {
			return fmt.Errorf("duplicate field %q", at(path, key))
		}
		seen[key] = true
		if err := checkValue(dec, fields[i].typ, at(path, key), depth+1, fields[i].nonEmpty); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return syntaxError(err)
	}
	for _, f := range fields {
		if f.required && !seen[f.name] {
			return fmt.Errorf("missing required field %q", at(path, f.name))
		}
	}
	return nil
}
