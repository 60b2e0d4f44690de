// Prints every orbit of unicode.SimpleFold, one line each, as hex code points
// starting from the orbit's smallest member; the first line is the Unicode
// version of Go's tables. After a line "--" come the ranges ("first last", in
// hex) of the runes Go's tables know (unicode.IsGraphic), so a char added by a
// later Unicode version can be told apart. tests/body_and_query.rs compares
// portcullis' fold with these orbits.
package main

import (
	"bufio"
	"fmt"
	"os"
	"unicode"
)

func main() {
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	fmt.Fprintln(w, unicode.Version)
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if r >= 0xD800 && r <= 0xDFFF {
			continue
		}
		next := unicode.SimpleFold(r)
		if next == r {
			continue
		}
		smallest := true
		for x := next; x != r; x = unicode.SimpleFold(x) {
			if x < r {
				smallest = false
				break
			}
		}
		if !smallest {
			continue
		}
		fmt.Fprintf(w, "%X", r)
		for x := next; x != r; x = unicode.SimpleFold(x) {
			fmt.Fprintf(w, " %X", x)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "--")
	start := rune(-1)
	for r := rune(0); r <= unicode.MaxRune+1; r++ {
		known := r <= unicode.MaxRune && unicode.IsGraphic(r)
		if known && start < 0 {
			start = r
		} else if !known && start >= 0 {
			fmt.Fprintf(w, "%X %X\n", start, r-1)
			start = -1
		}
	}
}
