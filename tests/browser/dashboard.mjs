// Drives orch's dashboard in headless Chromium (Debian's /usr/bin/chromium, never a downloaded
// browser) with JavaScript disabled: log in, open the waiting workflow from the pending list, approve it, reload until
// it is DONE, and check that POSTs without the session cookie or without the right CSRF token
// are refused. Screenshots of every page go to <screenshot-dir>.
//
//   node tests/browser/dashboard.mjs <base-url> <admin-token> <workflow-id> <screenshot-dir>
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [base, token, workflowId, shots] = process.argv.slice(2);
if (!base || !token || !workflowId || !shots) {
  console.error('usage: dashboard.mjs <base-url> <admin-token> <workflow-id> <screenshot-dir>');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true });
try {
  // JavaScript off: the dashboard must work as plain HTML forms (playwright still drives the
  // page from outside, as a user's clicks and typing would).
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, javaScriptEnabled: false });
  const page = await context.newPage();
  const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

  // Not logged in: the dashboard sends the browser to the login page.
  await page.goto(`${base}/ui/`);
  check(new URL(page.url()).pathname === '/ui/login', 'an anonymous visit lands on the login page');
  await page.fill('input[name=token]', 'not-the-token');
  await page.click('form[action="/ui/login"] button');
  check((await page.textContent('main')).includes('Wrong token'), 'a wrong token is refused');
  await shot('01-login');

  await page.fill('input[name=token]', token);
  await page.click('form[action="/ui/login"] button');
  check(new URL(page.url()).pathname === '/ui/', 'logging in opens the workflows list');
  check((await page.$$('script')).length === 0, 'the dashboard sends no script at all');
  const cookie = (await context.cookies()).find((c) => c.name === 'orch_session');
  check(cookie !== undefined, 'Chromium kept the Secure session cookie over http://127.0.0.1');
  check(cookie.httpOnly && cookie.secure && cookie.sameSite === 'Strict' && cookie.path === '/ui', 'the cookie is HttpOnly, Secure, SameSite=Strict, Path=/ui');
  await shot('02-workflows');

  // The filters narrow the list.
  await page.goto(`${base}/ui/?state=DONE`);
  check((await page.locator('a.workflow').count()) === 0, 'no DONE workflow yet');
  await page.goto(`${base}/ui/?state=WAITING_USER_APPROVAL&kind=triage`);
  check((await page.locator('a.workflow').count()) === 1, 'the waiting triage workflow is listed under its filters');

  // Values from the request are escaped, never run.
  const hostile = '"><script>window.pwned = 1</script>';
  await page.goto(`${base}/ui/?repo=${encodeURIComponent(hostile)}`);
  check((await page.evaluate(() => window.pwned)) === undefined, 'a hostile query value is not run');
  check((await page.inputValue('input[name=repo]')) === hostile, 'it is shown back as text');

  await page.click('a[href="/ui/pending"]');
  const link = page.locator(`a.workflow[href="/ui/workflows/${workflowId}"]`);
  check((await link.count()) === 1, `workflow ${workflowId} is pending`);
  await shot('03-pending');
  await link.click();
  check(new URL(page.url()).pathname === `/ui/workflows/${workflowId}`, 'the pending list links to the workflow');
  check((await page.getAttribute('#state [data-state]', 'data-state')) === 'WAITING_USER_APPROVAL', 'the page shows it waiting');
  check((await page.textContent('main')).includes('Model calls'), 'the timeline shows the model calls');
  await shot('04-workflow-waiting');

  // POSTs without the session or without the right CSRF token are refused.
  const csrf = await page.getAttribute(`form[action="/ui/workflows/${workflowId}/approve"] input[name=csrf]`, 'value');
  check(csrf && csrf.length >= 32, 'the approve form carries a CSRF token');
  const post = (path, body, cookieHeader) =>
    fetch(`${base}${path}`, {
      method: 'POST',
      redirect: 'manual',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...(cookieHeader ? { cookie: cookieHeader } : {}) },
      body,
    });
  const session = `orch_session=${cookie.value}`;
  const approve = `/ui/workflows/${workflowId}/approve`;
  check((await post(approve, `csrf=${csrf}`, null)).status === 403, 'a POST without the session cookie is refused (403)');
  check((await post(approve, '', session)).status === 403, 'a POST without a CSRF token is refused (403)');
  check((await post(approve, 'csrf=0123abcd', session)).status === 403, 'a POST with a wrong CSRF token is refused (403)');
  check((await post('/ui/breaker/reset', 'csrf=nope', session)).status === 403, 'the breaker reset wants the CSRF token too');
  check(
    (await page.getAttribute('#state [data-state]', 'data-state')) === 'WAITING_USER_APPROVAL',
    'the refused POSTs changed nothing'
  );

  await page.click(`form[action="${approve}"] button.approve`);
  check((await page.textContent('main')).includes('approval was recorded'), 'the page confirms the approval');
  let state = '';
  for (let i = 0; i < 100; i++) {
    state = await page.getAttribute('#state [data-state]', 'data-state');
    if (state === 'DONE') break;
    await new Promise((r) => setTimeout(r, 200));
    await page.reload();
  }
  check(state === 'DONE', `the workflow reached DONE (last seen ${state})`);
  // The vote is the logged-in operator's (ORCH_ADMIN_TOKEN is the operator `admin`), and the
  // page says who is logged in.
  check((await page.textContent('main')).includes('operator:admin'), 'the timeline shows the operator who voted');
  check((await page.textContent('#operator')).includes('operator:admin'), 'the page says who is logged in');
  await shot('05-workflow-done');

  await page.click('a[href="/ui/audit"]');
  check((await page.getAttribute('#chain', 'class')) === 'ok', 'the audit chain is intact');
  await shot('06-audit');

  await page.click('a[href="/ui/breaker"]');
  await page.click('form[action="/ui/breaker/reset"] button');
  check((await page.textContent('main')).includes('was reset'), 'the breaker reset form works');
  await shot('07-breaker');

  await page.click('form[action="/ui/logout"] button');
  check(new URL(page.url()).pathname === '/ui/login', 'logging out returns to the login page');
  check((await post('/ui/breaker/reset', `csrf=${csrf}`, session)).status === 403, 'the old session is gone after logout');
  console.log('dashboard: all checks passed');
} finally {
  await browser.close();
}
