// Renders the dict of `strop stats --json` (server/stats.py) as a fixed-width text table.

type Row = Record<string, unknown>;

function isRow(value: unknown): value is Row {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isScalarRow(value: unknown): value is Row {
  return isRow(value) && Object.values(value).every((v) => !isRow(v));
}

function cell(key: string, value: unknown): string {
  if (value === null || value === undefined) {
    return '-';
  }
  if (typeof value === 'number' && key.endsWith('_rate')) {
    return `${(100 * value).toFixed(1)}%`;
  }
  return String(value);
}

function header(key: string): string {
  return key.replace(/_rate$/, ' %').replace(/_/g, ' ');
}

/**
 * Sections are the top-level keys: a scalar row (like "total") is a one-row section, a dict of
 * rows (like "by_language") a section with one row per entry. Columns are the union of the rows'
 * keys, in first-seen order, so new server fields show up without a client change.
 */
export function renderStats(stats: Row): string {
  const sections: [string, [string, Row][]][] = [];
  for (const [name, value] of Object.entries(stats)) {
    if (isScalarRow(value)) {
      sections.push([name, [[name, value]]]);
    } else if (isRow(value)) {
      sections.push([name, Object.entries(value).filter((e): e is [string, Row] => isScalarRow(e[1]))]);
    }
  }
  const columns: string[] = [];
  for (const [, rows] of sections) {
    for (const [, row] of rows) {
      for (const key of Object.keys(row)) {
        if (!columns.includes(key)) {
          columns.push(key);
        }
      }
    }
  }
  const nameWidth = Math.max(8, ...sections.flatMap(([, rows]) => rows.map(([n]) => n.length)));
  const widths = columns.map((c) =>
    Math.max(header(c).length, ...sections.flatMap(([, rows]) => rows.map(([, r]) => cell(c, r[c]).length))),
  );
  const line = (first: string, cells: string[]) =>
    [first.padEnd(nameWidth), ...cells.map((c, i) => c.padStart(widths[i]))].join('  ');
  const out: string[] = [];
  for (const [title, rows] of sections) {
    out.push(`${title.replace(/_/g, ' ')}:`);
    out.push(line('', columns.map(header)));
    for (const [name, row] of rows) {
      out.push(line(name, columns.map((c) => cell(c, row[c]))));
    }
    if (rows.length === 0) {
      out.push('  (none yet)');
    }
    out.push('');
  }
  return out.join('\n');
}
