// Package sockfile prepares paths for unix sockets.
package sockfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// RemoveStale removes a socket file left at path by an earlier run, so a
// new listener can bind there. A missing file is fine; any other kind of
// file is an error and is left alone.
func RemoveStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	return os.Remove(path)
}
