//! Aligned plain-text tables for the REPL and logs.

/// Format rows as an aligned plain-text table: numeric columns right-aligned, text columns
/// left-aligned, the header underlined with dashes; two spaces between columns.
///
/// A column is numeric when every non-empty cell below the header is a number (`0.93`,
/// `-1e-3`, `12`, `85.5%`, `nan`). Rows shorter than the header are padded with empty cells,
/// longer rows get extra unnamed columns. Lines carry no trailing spaces and the result has
/// no final newline.
pub fn format_table(headers: &[String], rows: &[Vec<String>]) -> String {
    let columns = rows
        .iter()
        .map(Vec::len)
        .chain(std::iter::once(headers.len()))
        .max()
        .unwrap_or(0);
    if columns == 0 {
        return String::new();
    }
    let cell = |row: &[String], c: usize| row.get(c).map(|s| sanitize(s)).unwrap_or_default();
    let header_cells: Vec<String> = (0..columns).map(|c| cell(headers, c)).collect();
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| (0..columns).map(|c| cell(r, c)).collect())
        .collect();
    let width = |s: &str| s.chars().count();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            body.iter()
                .map(|r| width(&r[c]))
                .chain(std::iter::once(width(&header_cells[c])))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let numeric: Vec<bool> = (0..columns)
        .map(|c| {
            let mut cells = body
                .iter()
                .map(|r| r[c].as_str())
                .filter(|s| !s.is_empty())
                .peekable();
            cells.peek().is_some() && cells.all(is_number)
        })
        .collect();
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(c, text)| {
                let pad = " ".repeat(widths[c] - width(text));
                if numeric[c] {
                    format!("{pad}{text}")
                } else {
                    format!("{text}{pad}")
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = Vec::with_capacity(rows.len() + 2);
    let has_header = header_cells.iter().any(|h| !h.is_empty());
    if has_header {
        out.push(line(&header_cells));
        out.push(
            widths
                .iter()
                .map(|w| "-".repeat((*w).max(1)))
                .collect::<Vec<_>>()
                .join("  "),
        );
    }
    out.extend(body.iter().map(|r| line(r)));
    out.join("\n")
}

/// Cells are single-line: newlines and tabs would break the alignment.
fn sanitize(text: &str) -> String {
    text.replace(['\n', '\r', '\t'], " ")
}

fn is_number(text: &str) -> bool {
    let t = text.trim();
    let t = t.strip_suffix('%').unwrap_or(t);
    !t.is_empty() && t.parse::<f64>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(list: &[&str]) -> Vec<String> {
        list.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn numbers_right_text_left_with_underline() {
        let table = format_table(
            &s(&["method", "mAP", "rank"]),
            &[
                s(&["scratch", "0.7316", "16.78"]),
                s(&["MAE", "0.84", "2"]),
                s(&["MultiTalent", "nan", "10"]),
            ],
        );
        let expected = "\
method          mAP   rank
-----------  ------  -----
scratch      0.7316  16.78
MAE            0.84      2
MultiTalent     nan     10";
        assert_eq!(table, expected);
    }

    #[test]
    fn ragged_rows_and_mixed_columns() {
        let table = format_table(&s(&["a", "b"]), &[s(&["1"]), s(&["x", "2", "extra"])]);
        let lines: Vec<&str> = table.lines().collect();
        // Column a mixes "1" and "x": text, so left-aligned. Column b is numeric.
        assert_eq!(lines[0], "a  b");
        assert_eq!(lines[1], "-  -  -----");
        assert_eq!(lines[2], "1");
        assert_eq!(lines[3], "x  2  extra");
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn empty_inputs_and_unicode_widths() {
        assert_eq!(format_table(&[], &[]), "");
        assert_eq!(format_table(&s(&["only"]), &[]), "only\n----");
        let table = format_table(
            &s(&["name", "Δ"]),
            &[s(&["Δ-mAP", "12.5%"]), s(&["a\nb", "-1e-3"])],
        );
        assert_eq!(
            table,
            "name       Δ\n-----  -----\nΔ-mAP  12.5%\na b    -1e-3"
        );
        // No header row: just the aligned body.
        assert_eq!(
            format_table(&[], &[s(&["a", "10"]), s(&["bb", "5"])]),
            "a   10\nbb   5"
        );
    }
}
