"""The template check catches each kind of drift it promises to catch (and passes the real template
against code that makes the calls the product needs)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import unittest

from tests.stack import check_template

REPO = check_template.REPO
TEMPLATE = os.path.join(REPO, "template.yaml")

AUTOSCALING_RS = """
use aws_sdk_autoscaling::Client;
// .terminate_instance_in_auto_scaling_group() in a comment is not a call
async fn f(c: &Client) {
    c.complete_lifecycle_action().send().await;
    c.record_lifecycle_action_heartbeat().send().await;
    c.describe_auto_scaling_groups().send().await;
    c.describe_lifecycle_hooks().send().await;
    c.describe_warm_pool().send().await;
}
#[cfg(test)]
mod tests {
    fn g(c: &Client) { c.set_desired_capacity(); }
}
"""
EC2_RS = """
use aws_sdk_ec2 as ec2;
async fn f(c: &ec2::Client) {
    c.describe_instances().into_paginator();
    c.describe_spot_instance_requests().send().await;
}
"""


class CheckTemplateTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.src = os.path.join(self.tmp.name, "src")
        os.makedirs(os.path.join(self.src, "aws"))
        with open(os.path.join(self.src, "aws", "autoscaling.rs"), "w") as f:
            f.write(AUTOSCALING_RS)
        with open(os.path.join(self.src, "aws", "ec2.rs"), "w") as f:
            f.write(EC2_RS)
        with open(TEMPLATE) as f:
            self.text = f.read()

    def problems(self, text: str | None = None, src: str | None = None) -> list[str]:
        path = os.path.join(self.tmp.name, "template.yaml")
        with open(path, "w") as f:
            f.write(self.text if text is None else text)
        return check_template.check(
            check_template.load_template(path), check_template.called_actions(src or self.src)
        )

    def mutate(self, old: str, new: str) -> list[str]:
        self.assertIn(old, self.text, "the mutation no longer applies to template.yaml")
        return self.problems(self.text.replace(old, new, 1))

    def test_code_calls_are_found_outside_tests_and_comments(self):
        self.assertEqual(
            set(check_template.called_actions(self.src)),
            {
                "autoscaling:CompleteLifecycleAction",
                "autoscaling:RecordLifecycleActionHeartbeat",
                "autoscaling:DescribeAutoScalingGroups",
                "autoscaling:DescribeLifecycleHooks",
                "autoscaling:DescribeWarmPool",
                "ec2:DescribeInstances",
                "ec2:DescribeSpotInstanceRequests",
            },
        )

    def test_the_template_matches_code_making_the_product_calls(self):
        self.assertEqual(self.problems(), [])

    def test_lifecycle_action_on_star_fails(self):
        problems = self.mutate(
            'Resource: !Sub "arn:${AWS::Partition}:autoscaling:${AWS::Region}:${AWS::AccountId}'
            ':autoScalingGroup:*:autoScalingGroupName/${AutoScalingGroupName}"',
            'Resource: "*"',
        )
        self.assertTrue(any('CompleteLifecycleAction granted on "*"' in p for p in problems), problems)

    def test_lifecycle_action_on_every_group_fails(self):
        problems = self.mutate(
            "autoScalingGroupName/${AutoScalingGroupName}", "autoScalingGroupName/*"
        )
        self.assertTrue(any("not a group ARN" in p for p in problems), problems)

    def test_an_action_the_code_does_not_call_fails(self):
        problems = self.mutate(
            "- autoscaling:DescribeLifecycleHooks",
            "- autoscaling:DescribeLifecycleHooks\n                  - autoscaling:SetDesiredCapacity",
        )
        self.assertEqual(
            problems,
            ["FunctionRole/lifecycle-actions: grants autoscaling:SetDesiredCapacity, which the code does not call"],
        )

    def test_wildcard_and_foreign_actions_fail(self):
        problems = self.mutate("- ec2:DescribeInstances", "- ec2:Describe*\n                  - s3:GetObject")
        self.assertTrue(any("wildcard action 'ec2:Describe*'" in p for p in problems), problems)
        self.assertTrue(any("s3:GetObject, which neither" in p for p in problems), problems)
        self.assertTrue(any("calls ec2:DescribeInstances" in p for p in problems), problems)

    def test_a_call_missing_from_the_template_fails(self):
        problems = self.mutate("- autoscaling:DescribeLifecycleHooks\n", "")
        self.assertTrue(
            any("calls autoscaling:DescribeLifecycleHooks" in p for p in problems), problems
        )

    def test_command_line(self):
        run = subprocess.run(
            [sys.executable, os.path.join(REPO, "tests", "stack", "check_template.py"), "--src", self.src],
            capture_output=True,
            text=True,
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        run = subprocess.run(
            [sys.executable, os.path.join(REPO, "tests", "stack", "check_template.py"), "--src", self.tmp.name + "/none"],
            capture_output=True,
            text=True,
        )
        self.assertEqual(run.returncode, 1)
        self.assertIn("which the code does not call", run.stderr)


if __name__ == "__main__":
    unittest.main()
