-- The usage a call priced by tokens was committed at (tokens by class, the keys of
-- bridle_core::llm::TokenUsage), which token views add up per class.
ALTER TABLE reservations ADD COLUMN usage JSONB;
