// Walk Mailgun events with the official SDK, unchanged but for `url`:
//   node events.js BASE_URL KEY DOMAIN BEGIN END LIMIT
// prints {"pages": <the first page's parsed paging>, "items": [every item, in order]}
// following the SDK's own page ids (`pages.next.page`) until a page is empty.
"use strict";
const formData = require("form-data");
const Mailgun = require("mailgun.js");

async function main() {
  const [url, key, domain, begin, end, limit] = process.argv.slice(2);
  const mg = new Mailgun(formData).client({ username: "api", key, url });
  const items = [];
  let res = await mg.events.get(domain, { begin, end, ascending: "yes", limit: Number(limit) });
  const pages = res.pages;
  for (let i = 0; i < 1000 && res.items.length > 0; i += 1) {
    items.push(...res.items);
    res = await mg.events.get(domain, { page: res.pages.next.page });
  }
  process.stdout.write(JSON.stringify({ pages, items }));
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
