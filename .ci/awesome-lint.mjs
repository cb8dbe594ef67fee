// Run awesome-lint on a README without its `awesome-github` rule.
//
// That rule needs a git remote and the GitHub API (repository description, topics, license), which a
// fresh CI machine or a fork does not have; every other awesome-lint rule runs unchanged.
// Usage: node .ci/awesome-lint.mjs [README.md]
import process from 'node:process';
import lint from 'awesome-lint/index.js';
import {createConfig} from 'awesome-lint/config.js';
import rules from 'awesome-lint/rules/index.js';
import githubRule from 'awesome-lint/rules/github.js';

const offlineRules = rules.filter(([rule]) => rule !== githubRule);
if (offlineRules.length !== rules.length - 1) {
	console.error('awesome-lint: could not find the awesome-github rule to skip; has awesome-lint changed?');
	process.exit(2);
}

await lint.report({filename: process.argv[2] ?? 'README.md', config: createConfig(offlineRules)});
