package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// MaxFileSize bounds every TOML file snpd reads (1 MiB): larger input is refused before
// decoding.
const MaxFileSize = 1 << 20

// DecodeStrict decodes TOML from data into v. Unknown keys are errors naming the key and
// its line; syntax and type errors name their line and column. name labels messages
// (usually the file path). All unknown keys are reported, joined.
func DecodeStrict(name string, data []byte, v any) error {
	if len(data) > MaxFileSize {
		return fmt.Errorf("%s: file is %d bytes, more than the %d allowed", name, len(data), MaxFileSize)
	}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		return nil
	}
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		errs := make([]error, 0, len(strict.Errors))
		for i := range strict.Errors {
			e := &strict.Errors[i]
			row, _ := e.Position()
			errs = append(errs, fmt.Errorf("%s:%d: unknown key %q", name, row, strings.Join(e.Key(), ".")))
		}
		return errors.Join(errs...)
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		return fmt.Errorf("%s:%d:%d: %s", name, row, col, de.Error())
	}
	return fmt.Errorf("%s: %w", name, err)
}

// ReadFileStrict reads path (at most MaxFileSize bytes) and decodes it with DecodeStrict.
func ReadFileStrict(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	return DecodeStrict(path, data, v)
}
