// SPDX-License-Identifier: MIT
// An AggregatorV3Interface-compatible contract whose round the test sets freely
// (stale, zero, negative answers; answeredInRound behind roundId).
pragma solidity ^0.8.20;

contract TestAggregator {
    uint8 public decimals;
    uint80 private roundId_;
    int256 private answer_;
    uint256 private startedAt_;
    uint256 private updatedAt_;
    uint80 private answeredInRound_;

    constructor(uint8 decimals__) {
        decimals = decimals__;
    }

    function setRound(
        uint80 roundId,
        int256 answer,
        uint256 startedAt,
        uint256 updatedAt,
        uint80 answeredInRound
    ) external {
        roundId_ = roundId;
        answer_ = answer;
        startedAt_ = startedAt;
        updatedAt_ = updatedAt;
        answeredInRound_ = answeredInRound;
    }

    function description() external pure returns (string memory) {
        return "TEST / USD";
    }

    function version() external pure returns (uint256) {
        return 4;
    }

    function latestRoundData()
        external
        view
        returns (uint80, int256, uint256, uint256, uint80)
    {
        return (roundId_, answer_, startedAt_, updatedAt_, answeredInRound_);
    }
}
