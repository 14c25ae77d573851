"""The four modules of dartflow and the policy models they share."""
